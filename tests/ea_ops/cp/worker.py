"""One rank of the context-parallel tests (tests/ea_ops/test_distributed.py starts W of them on 127.0.0.1).

Every rank builds the whole inputs from the case's seed, runs ``ea_attention`` on the whole sequence in one
process as the reference, then its own slice through ``ea_attention_cp``, and compares outputs, gradients and
the final state. Prints one JSON line per case: its name and the errors measured."""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist

import ea_ops
from ea_ops.distributed import ea_attention_cp
from ea_ops.testing import rel_err

CASES = {
    # name: (lengths per rank (a list per world size), dict of options)
    "even": dict(lengths={2: [16, 16], 3: [11, 11, 10], 4: [8, 8, 8, 8]}),
    "uneven_and_empty": dict(lengths={2: [0, 29], 3: [5, 0, 23], 4: [1, 17, 0, 9]}),
    "states": dict(lengths={2: [9, 14], 3: [7, 3, 12], 4: [4, 6, 0, 11]}, init=True, final=True),
    "far_keys_on_one_rank": dict(lengths={2: [12, 12], 3: [8, 8, 8], 4: [6, 6, 6, 6]}, far=True, final=True),
    "packed": dict(lengths={2: [13, 20], 3: [10, 4, 19], 4: [9, 3, 0, 21]},
                   cu=[0, 2, 2, 17, 18, 33], init=True, final=True),
    "gqa": dict(lengths={2: [10, 13], 3: [9, 0, 14], 4: [5, 6, 6, 6]}, kv_heads=1, init=True, final=True),
    "non_causal": dict(lengths={2: [10, 13], 3: [9, 0, 14], 4: [5, 6, 6, 6]}, causal=False),
}
B, H, D, ORDER = 2, 2, 4, 4


def _err(x: torch.Tensor, ref: torch.Tensor, a: int, e: int) -> float:
    """The relative error of the slice ``x`` of ``ref[:, a:e]``; a slice whose exact value is about 0 (the
    first token's dq) is measured against a thousandth of the whole tensor's size instead."""
    part = ref[:, a:e]
    den = max(float(part.norm()), 1e-3 * float(ref.norm()))
    return float((x.double() - part).norm()) / den if den else float((x.double() - part).norm())


def run_case(name: str, world: int, rank: int, backend: str) -> dict:
    spec = CASES[name]
    lengths = spec["lengths"][world]
    T = sum(lengths)
    cu = spec.get("cu")
    if cu is not None:
        cu = [x * T // cu[-1] for x in cu]  # the offsets scaled to this world's total
    b = 1 if cu is not None else B
    dtype = torch.float64 if backend == "torch" else torch.float32
    g = torch.Generator().manual_seed(len(name) * 1000 + world)
    kv_heads = spec.get("kv_heads", H)
    q = torch.randn(b, T, H, D, generator=g, dtype=torch.float64) * 0.6
    k = torch.randn(b, T, kv_heads, D, generator=g, dtype=torch.float64) * 0.6
    v = torch.randn(b, T, kv_heads, D, generator=g, dtype=torch.float64)
    go = torch.randn(b, T, H, D, generator=g, dtype=torch.float64)
    if spec.get("far"):  # keys near |k| = 12 on the first rank, small keys after: the references must merge
        k[:, :lengths[0]] = 11.5 + 0.3 * k[:, :lengths[0]]
        q[:, :lengths[0]] = 11.5 + 0.3 * q[:, :lengths[0]]
    q, k, v, go = (t.to(dtype) for t in (q, k, v, go))
    causal = spec.get("causal", True)
    init = None
    n_state = len(cu) - 1 if cu is not None else b
    if spec.get("init"):
        qq, kk, vv = (torch.randn(n_state, 5, *t.shape[2:], generator=g, dtype=torch.float64).to(dtype)
                      for t in (q, k, v))
        _, init = ea_ops.ea_attention(qq, kk, vv, order=ORDER, output_final_state=True, backend="torch")
    final = spec.get("final", False)
    cu_t = torch.tensor(cu) if cu is not None else None
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    ref_backend = "torch"
    o_ref, st_ref = ea_ops.ea_attention(*(t.double() for t in leaves), order=ORDER, causal=causal,
                                        initial_state=None if init is None else init.to(torch.float64),
                                        output_final_state=final, cu_seqlens=cu_t, backend=ref_backend)
    grads_ref = torch.autograd.grad(o_ref, leaves, go.double())
    base = None
    if backend != "torch":  # the same backend in one process: how close float32 itself comes
        base_leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        o_base, st_base = ea_ops.ea_attention(*base_leaves, order=ORDER, causal=causal, initial_state=init,
                                              output_final_state=final, cu_seqlens=cu_t, backend=backend)
        base = (o_base, *torch.autograd.grad(o_base, base_leaves, go))
    a = sum(lengths[:rank])
    e = a + lengths[rank]
    mine = [t[:, a:e].detach().clone().requires_grad_() for t in (q, k, v)]
    o, st = ea_attention_cp(*mine, order=ORDER, causal=causal, cu_seqlens=cu_t,
                            initial_state=init if rank == 0 else None, output_final_state=final, backend=backend)
    (o.double() * go[:, a:e].double()).sum().backward()
    out = {"case": name, "rank": rank, "T": lengths[rank]}
    if e > a:
        got = (o, *(t.grad for t in mine))
        for i, (key, x, ref) in enumerate(zip(("o", "dq", "dk", "dv"), got, (o_ref, *grads_ref))):
            out[key] = _err(x, ref, a, e)
            if base is not None:
                out["base_" + key] = _err(base[i][:, a:e], ref, a, e)
    if final:
        out["S"], out["Z"] = rel_err(st.S, st_ref.S), rel_err(st.Z, st_ref.Z)
        out["m"] = float((st.m.double() - st_ref.m).abs().max())
    out["finite"] = bool(torch.isfinite(o).all()) and all(bool(torch.isfinite(t.grad).all()) for t in mine)
    return out


def main() -> int:
    world, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    backend, names = sys.argv[1], sys.argv[2].split(",")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        for name in names:
            print(json.dumps(run_case(name, world, rank, backend)), flush=True)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
