"""``EAState`` for serving (issue 15, item 5): batch selection, concatenation, moves and in-place copies."""

from __future__ import annotations

import pytest
import torch

import ea_ops
from ea_ops import EADecoder, EAState


def _states():
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 7, 2, 4) for _ in range(3))
    _, st = ea_ops.ea_attention(q, k, v, order=4, output_final_state=True, backend="torch")
    return q, k, v, st


def test_index_select_is_the_state_of_the_selected_rows():
    q, k, v, st = _states()
    idx = torch.tensor([2, 0, 0])
    sel = st.index_select(idx)
    _, want = ea_ops.ea_attention(q[idx], k[idx], v[idx], order=4, output_final_state=True, backend="torch")
    assert all(torch.equal(getattr(sel, f), getattr(want, f)) for f in ("S", "Z", "m"))
    assert torch.equal(st.index_select(torch.tensor([1], dtype=torch.int32)).S, st.S[1:2])
    with pytest.raises(TypeError, match="index must be a torch.Tensor"):
        st.index_select([0, 1])
    with pytest.raises(ValueError, match="index must be a 1-d int32 or int64 tensor"):
        st.index_select(torch.tensor([0.0]))


def test_cat_joins_batches_and_continues_them():
    q, k, v, st = _states()
    both = EAState.cat([st.index_select(torch.tensor([0])), st.index_select(torch.tensor([1, 2]))])
    assert all(torch.equal(getattr(both, f), getattr(st, f)) for f in ("S", "Z", "m"))
    # a joined state continues each row as its own would
    o, _ = ea_ops.ea_attention(q, k, v, order=4, initial_state=both, backend="torch")
    o0, _ = ea_ops.ea_attention(q[:1], k[:1], v[:1], order=4, initial_state=st.index_select(torch.tensor([0])),
                                backend="torch")
    assert torch.equal(o[:1], o0)
    with pytest.raises(ValueError, match="states must hold at least one EAState"):
        EAState.cat([])
    with pytest.raises(TypeError, match=r"states\[1\] must be an ea_ops.EAState"):
        EAState.cat([st, st.S])
    with pytest.raises(ValueError, match=r"states\[1\] has sums \[3, 2, 7, 4\].*only the batch may differ"):
        EAState.cat([st, EAState.empty(3, 2, 4, 6)])
    with pytest.raises(ValueError, match=r"states\[1\] is torch.float64"):
        EAState.cat([st, st.to(torch.float64)])


def test_to_and_copy_into_a_fixed_address_state():
    _, _, _, st = _states()
    assert st.to(torch.float64).S.dtype == torch.float64 and st.to("cpu").S.device.type == "cpu"
    held = EAState.empty(3, 2, 4, 4)
    ptrs = [getattr(held, f).data_ptr() for f in ("S", "Z", "m")]
    assert held.copy_(st) is held
    assert [getattr(held, f).data_ptr() for f in ("S", "Z", "m")] == ptrs
    assert all(torch.equal(getattr(held, f), getattr(st, f)) for f in ("S", "Z", "m"))
    dec = EADecoder(held, order=4, backend="torch")  # a decoder continues from the copied-in state
    q_t, k_t, v_t = (torch.randn(3, 2, 4) for _ in range(3))
    o = dec.step(q_t, k_t, v_t)
    want, _ = ea_ops.ea_recurrent_step(q_t, k_t, v_t, st, order=4, backend="torch")
    assert torch.equal(o, want) and held.S.data_ptr() == ptrs[0]
    with pytest.raises(ValueError, match=r"src.S must have shape \[3, 2, 5, 4\]"):
        held.copy_(EAState.empty(2, 2, 4, 4))
    with pytest.raises(TypeError, match="src must be an ea_ops.EAState"):
        held.copy_(st.S)
