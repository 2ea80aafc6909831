"""Context parallelism: EA over a sequence split across the ranks of a ``torch.distributed`` group.

Causal EA needs from the earlier ranks only their states (``2(t+1) D`` floats per kv head and a reference),
whatever the length: each rank sums its own piece in closed form (``state_sums``), the pieces are all-gathered,
and each rank starts its local pass (any backend) from the merge of the pieces before it. The backward runs
the other way: each rank's gradient with respect to the state it started from (from its local pass alone) is
all-gathered, and each rank adds to its keys' gradients the part that reached the later ranks through its
piece's state. Non-causal EA is an all-reduce of the full sums. docs/math.md section 9.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import torch
from torch import Tensor

from . import checks, gqa
from .api import ea_attention
from .features import features
from .state import EAState
from .state_sums import chunk_of, merge, piece_sums, piece_sums_grad, rebase_factor

_SENT: Counter = Counter()  # logical bytes this process sent, by collective (``bytes_sent``)


def bytes_sent() -> dict[str, int]:
    """Bytes this process has sent through ``ea_attention_cp``'s collectives, by collective, counted as the
    ring algorithms send them: an all-gather ``(W - 1)`` times the rank's tensor, an all-reduce ``2 (W - 1) / W``
    times the tensor, a broadcast once from the source."""
    return dict(_SENT)


def reset_bytes_sent() -> None:
    _SENT.clear()


class _Comm:
    """The collectives of one call on ``group`` (gloo or NCCL), counting what they send."""

    def __init__(self, group):
        import torch.distributed as dist

        self.dist, self.group = dist, group
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)

    def all_gather(self, t: Tensor) -> list[Tensor]:
        t = t.contiguous()
        out = [torch.empty_like(t) for _ in range(self.world)]
        self.dist.all_gather(out, t, group=self.group)
        _SENT["all_gather"] += (self.world - 1) * t.numel() * t.element_size()
        return out

    def all_reduce_sum(self, t: Tensor) -> Tensor:
        t = t.contiguous()
        self.dist.all_reduce(t, group=self.group)
        _SENT["all_reduce"] += 2 * (self.world - 1) * t.numel() * t.element_size() // self.world
        return t

    def broadcast(self, t: Tensor, src_rank: int = 0) -> Tensor:
        t = t.contiguous()
        src = self.dist.get_global_rank(self.group, src_rank) if self.group is not None else src_rank
        self.dist.broadcast(t, src, group=self.group)
        if self.rank == src_rank:
            _SENT["broadcast"] += t.numel() * t.element_size()
        return t


# ------------------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class _Plan:
    """Who holds what, computed alike on every rank. A *piece* is a sequence's run of positions on one rank:
    ``(sequence, begin, end)`` in local positions. ``carry[j]``: the sequence whose piece rank ``j`` hands on
    (its last piece, where the sequence goes on past rank ``j``), or -1; ``first[j]``: the sequence rank ``j``'s
    first piece continues, or -1. Without ``cu_seqlens`` every batch row is a sequence spanning all ranks."""

    packed: bool
    pieces: tuple[tuple[tuple[int, int, int], ...], ...]  # per rank
    carry: tuple[int, ...]
    first: tuple[int, ...]
    ends: tuple[tuple[int, ...], ...]  # per rank: the sequences (batch rows) that end on it
    n_seq: int

    def sources(self, r: int) -> list[int]:
        """The ranks whose pieces come before rank ``r``'s first piece, in order."""
        return [j for j in range(r) if self.first[r] >= 0 and self.carry[j] == self.first[r]]


def _plan(lengths: list[int], offsets: list[int] | None, batch: int) -> _Plan:
    starts = [sum(lengths[:j]) for j in range(len(lengths))]
    W = len(lengths)
    if offsets is None:
        live = [j for j in range(W) if lengths[j]]
        last = live[-1] if live else 0
        return _Plan(False, tuple(((0, 0, n),) if n else () for n in lengths),
                     tuple(0 if n else -1 for n in lengths), tuple(0 if n and j > 0 else -1
                                                                  for j, n in enumerate(lengths)),
                     tuple(tuple(range(batch)) if j == last else () for j in range(W)), batch)
    N = len(offsets) - 1
    pieces, carry, first, ends = [], [], [], []
    for j, (a, n) in enumerate(zip(starts, lengths)):
        b = a + n
        mine = tuple((s, max(offsets[s], a) - a, min(offsets[s + 1], b) - a) for s in range(N)
                     if max(offsets[s], a) < min(offsets[s + 1], b))
        pieces.append(mine)
        carry.append(mine[-1][0] if mine and offsets[mine[-1][0] + 1] > b else -1)
        first.append(mine[0][0] if mine and offsets[mine[0][0]] < a else -1)
        done = [s for s, _, _ in mine if offsets[s + 1] <= b]
        if j == 0:  # sequences with no token end where they start: on rank 0
            done += [s for s in range(N) if offsets[s] == offsets[s + 1]]
        ends.append(tuple(sorted(done)))
    return _Plan(True, tuple(pieces), tuple(carry), tuple(first), tuple(ends), N)


# -------------------------------------------------------------------------------------------- the call
def ea_attention_cp(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    order: int = 6,
    scale: float = 1.0,
    group=None,
    cu_seqlens: Tensor | None = None,
    initial_state: EAState | None = None,
    output_final_state: bool = False,
    backend: str = "auto",
    causal: bool = True,
) -> tuple[Tensor, EAState | None]:
    """EA-t of a sequence split along ``T`` over the ranks of ``group`` (default: the whole world).

    Each rank passes its contiguous slice ``q, k, v [B, T_r, H, D]`` (``k, v`` may have ``H_kv`` heads), in rank
    order; slices may differ in length, and may be empty. ``cu_seqlens``: the *global* ``[N+1]`` offsets
    (``B = 1``), the same on every rank; a sequence may cross ranks. ``initial_state`` (``[B or N, H_kv, t+1, D]``)
    is read on rank 0 and enters each sequence's first token; the final state (``output_final_state``) is
    returned on every rank. ``backend`` runs the local work. Every rank must call this, and later run the
    backward of its output, in the same order (the collectives pair up). Returns ``(o [B, T_r, H, D], state)``.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("ea_attention_cp needs torch.distributed initialised (init_process_group)")
    H_kv = checks.check_qkv(q, k, v, rank=4)
    order = checks.check_order(order)
    scale = checks.check_scale(scale)
    causal = checks.check_flag(causal, "causal")
    output_final_state = checks.check_flag(output_final_state, "output_final_state")
    backend = checks.check_backend(backend)
    if not causal and (initial_state is not None or output_final_state):
        raise ValueError("initial_state and output_final_state need causal=True (non-causal EA has no state)")
    comm = _Comm(group)
    B, T, H, D = q.shape
    has_init = int(comm.rank == 0 and initial_state is not None)
    mine = torch.tensor([T, B, H, H_kv, D, order, int(causal), int(cu_seqlens is not None), has_init,
                         int(q.dtype == torch.float64), int(output_final_state)], dtype=torch.int64, device=q.device)
    meta = [row.tolist() for row in comm.all_gather(mine)]
    names = ("T", "B", "H", "H_kv", "D", "order", "causal", "cu_seqlens given", "", "float64",
             "output_final_state")
    for i, name in enumerate(names):
        if name not in ("T", "") and len({row[i] for row in meta}) > 1:
            raise ValueError(f"ranks disagree on {name}: {[row[i] for row in meta]} (rank order)")
    lengths = [row[0] for row in meta]
    offsets = None
    if cu_seqlens is not None:
        if B != 1:
            raise ValueError(f"cu_seqlens needs batch size 1 (sequences packed along T), got q batch {B}")
        full = torch.zeros(1, sum(lengths), 1, 1)
        offsets = [0] + [e for _, e in checks.check_cu_seqlens(cu_seqlens, full)]
    if not causal:
        return _GlobalAttention.apply(q, k, v, order, scale, comm, H_kv), None
    cdt = checks.state_dtype(q.dtype)
    init = None
    if meta[0][8]:  # rank 0's initial state, on every rank
        n = B if offsets is None else len(offsets) - 1
        if comm.rank == 0:
            checks.check_state(initial_state, "initial_state", batch=n, heads=H_kv, dim=D, order=order, q=q)
            fields = [initial_state.S, initial_state.Z, initial_state.m]
        else:
            fields = [torch.empty(n, H_kv, order + 1, D, dtype=cdt, device=q.device) for _ in range(2)]
            fields.append(torch.empty(n, H_kv, D, dtype=cdt, device=q.device))
        init = EAState(*(comm.broadcast(t.clone()) for t in fields))
    plan = _plan(lengths, offsets, B)
    o, S, Z, m = _CausalCP.apply(q, k, v, order, scale, backend, comm, plan, init, output_final_state)
    return o, (EAState(S, Z, m) if output_final_state else None)


def _empty_rows(n: int, H_kv: int, D: int, order: int, q: Tensor) -> EAState:
    return EAState.empty(n, H_kv, D, order, device=q.device, dtype=checks.state_dtype(q.dtype))


def _init_rows(init: EAState | None, seqs: list[int], H_kv: int, D: int, order: int, q: Tensor) -> EAState:
    """The initial states of sequences ``seqs`` (rank 0's ``initial_state`` rows, else empty)."""
    if init is None:
        return _empty_rows(len(seqs), H_kv, D, order, q)
    idx = torch.tensor(seqs, dtype=torch.int64, device=init.S.device)
    return init.index_select(idx)


def _stack(st: EAState) -> Tensor:
    """``S, Z [n, H, t+1, D]`` and ``m [n, H, D]`` as one tensor ``[n, H, 2(t+1) + 1, D]`` (one collective)."""
    return torch.cat([st.S, st.Z, st.m[:, :, None]], dim=2)


def _unstack(t: Tensor, order: int) -> EAState:
    t1 = order + 1
    return EAState(t[:, :, :t1], t[:, :, t1:2 * t1], t[:, :, 2 * t1])


class _CausalCP(torch.autograd.Function):
    """The causal call on one rank (``ea_attention_cp``); ``q, k, v`` its slice."""

    @staticmethod
    def forward(ctx, q, k, v, order, scale, backend, comm, plan, init, want_final):
        B, T, H, D = q.shape
        H_kv = k.shape[2]
        me = comm.rank
        # this rank's piece that goes on to later ranks: its state from an empty start, by the backend's kernel
        # (the state of ``state_sums.piece_sums``; the kernel's scan is ~20x faster than those torch sums)
        rows = B if not plan.packed else 1
        if plan.carry[me] >= 0:
            _, a, b = plan.pieces[me][-1]
            kp, vp = k[:, a:b], v[:, a:b]
            _, carry = ea_attention(kp, kp, vp, order=order, scale=scale, output_final_state=True, backend=backend)
        else:
            carry = _empty_rows(rows, H_kv, D, order, q)
        carries = [_unstack(t, order) for t in comm.all_gather(_stack(carry))]
        starts = _start_states(plan, me, carries, init, H_kv, D, order, q)
        local = _local_init(plan, me, starts, init, H_kv, D, order, q)
        cu = _local_cu(plan, me, q)
        # the local pass keeps its own autograd graph for the backward (no second forward there)
        leaves = [t.detach().requires_grad_(t.requires_grad) for t in (q, k, v)]
        with torch.enable_grad():
            o, fin = _local_forward(*leaves, order, scale, backend, local, cu, want_final)
        final = _final(plan, me, fin, init, want_final, comm, H_kv, D, order, q)
        ctx.save_for_backward(q, k, v)
        ctx.meta = (order, scale, backend, comm, plan, init, carries, starts, local, cu, leaves, o)
        ctx.mark_non_differentiable(*final)
        return (o.detach(), *final)

    @staticmethod
    def backward(ctx, go, *_):
        q, k, v = ctx.saved_tensors
        order, scale, backend, comm, plan, init, carries, starts, local, cu, leaves, o = ctx.meta
        ctx.meta = None  # the local graph goes with this backward
        me, r = comm.rank, math.sqrt(scale)
        H_kv, D = k.shape[2], k.shape[3]
        go = go.contiguous()
        wrt = [t for t in leaves if t.requires_grad]
        if q.shape[1] and wrt and o.requires_grad:
            found = iter(torch.autograd.grad(o, wrt, go))
            dq, dk, dv = (next(found) if t.requires_grad else torch.zeros_like(t) for t in leaves)
        else:
            dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        o = o.detach()
        # the gradient with respect to the state this rank's first piece started from
        rows = starts.S.shape[0] if starts is not None else (q.shape[0] if not plan.packed else 1)
        dstart = torch.zeros(rows, H_kv, 2 * (order + 1) + 1, D, dtype=checks.state_dtype(q.dtype),
                             device=q.device)
        if starts is not None:
            dS, dZ = _start_state_grad(q, k, o, go, local, cu, plan, order, scale, backend)
            dstart[:, :, :order + 1], dstart[:, :, order + 1:2 * (order + 1)] = dS, dZ
        dstarts = [_unstack(t, order) for t in comm.all_gather(dstart)]
        # what reached later ranks through this rank's piece: the merge's rebase, then the piece's sums
        if plan.carry[me] >= 0:
            mine = carries[me]
            cS, cZ = torch.zeros_like(mine.S), torch.zeros_like(mine.Z)
            for later in range(me + 1, comm.world):
                if me in plan.sources(later):
                    m_start = _start_m(plan, later, carries, init)
                    f = rebase_factor(m_start, mine.m)[:, :, None]
                    cS += dstarts[later].S * f
                    cZ += dstarts[later].Z * f
            _, a, b = plan.pieces[me][-1]
            cdt = cS.dtype
            gy, gv = piece_sums_grad(k[:, a:b].to(cdt) * r, v[:, a:b].to(cdt), mine.m, cS, cZ)
            dk = dk.clone()
            dv = dv.clone()
            dk[:, a:b] += (gy * r).to(dk.dtype)
            dv[:, a:b] += gv.to(dv.dtype)
        return dq, dk, dv, None, None, None, None, None, None, None


def _start_m(plan: _Plan, r: int, carries: list[EAState], init: EAState | None) -> Tensor:
    """The reference of rank ``r``'s start state (the merge's minimum)."""
    m = None
    parts = ([_init_m(plan, r, init)] if init is not None else []) + [carries[j].m for j in plan.sources(r)]
    for x in parts:
        m = x if m is None else torch.minimum(m, x)
    return m


def _init_m(plan: _Plan, r: int, init: EAState) -> Tensor:
    return init.m if not plan.packed else init.m[plan.first[r]:plan.first[r] + 1]


def _start_states(plan, me, carries, init, H_kv, D, order, q) -> EAState | None:
    """The state rank ``me``'s first piece starts from, when it continues a sequence from earlier ranks."""
    if plan.first[me] < 0:
        return None
    parts = [carries[j] for j in plan.sources(me)]
    if init is not None:
        parts.insert(0, init if not plan.packed else init.index_select(torch.tensor([plan.first[me]])))
    return merge(parts) if parts else None


def _local_init(plan, me, starts, init, H_kv, D, order, q) -> EAState | None:
    """The initial state of each local piece (rows of the local call)."""
    seqs = [s for s, _, _ in plan.pieces[me]]
    if not plan.packed:
        if starts is not None:
            return starts
        return init
    if not seqs:
        return None
    rows = _init_rows(init, seqs, H_kv, D, order, q)
    if starts is not None:
        rows = EAState(*(torch.cat([a, b[1:]]) for a, b in zip((starts.S, starts.Z, starts.m),
                                                                (rows.S, rows.Z, rows.m))))
    return rows


def _local_cu(plan: _Plan, me: int, q: Tensor) -> Tensor | None:
    if not plan.packed:
        return None
    bounds = [0] + [e for _, _, e in plan.pieces[me]]
    return torch.tensor(bounds if len(bounds) > 1 else [0, 0], dtype=torch.int64)


def _local_forward(q, k, v, order, scale, backend, local, cu, want_final):
    if q.shape[1] == 0:
        return torch.empty_like(q), None
    o, fin = ea_attention(q, k, v, order=order, scale=scale, initial_state=local, cu_seqlens=cu,
                          output_final_state=want_final, backend=backend)
    return o, fin


def _final(plan, me, fin, init, want, comm, H_kv, D, order, q) -> tuple[Tensor, Tensor, Tensor]:
    """Every sequence's final state on every rank: the rank where it ends contributes it, the others zeros,
    summed (exact: adding zeros changes no bit, and keeps a NaN)."""
    cdt = checks.state_dtype(q.dtype)
    if not want:
        return tuple(q.new_empty(0, dtype=cdt) for _ in range(3))
    buf = torch.zeros(plan.n_seq, H_kv, 2 * (order + 1) + 1, D, dtype=cdt, device=q.device)
    seqs = [s for s, _, _ in plan.pieces[me]]
    for s in plan.ends[me]:
        if s in seqs and fin is not None:
            row = seqs.index(s) if plan.packed else None
            st = fin if row is None else EAState(fin.S[row:row + 1], fin.Z[row:row + 1], fin.m[row:row + 1])
        else:  # no token: its initial state, or the empty one
            st = _init_rows(init, [s], H_kv, D, order, q) if plan.packed else (
                init if init is not None else _empty_rows(plan.n_seq, H_kv, D, order, q))
        if plan.packed:
            buf[s:s + 1] = _stack(st)
        else:
            buf[:] = _stack(st)
            break
    out = _unstack(comm.all_reduce_sum(buf), order)
    return out.S.contiguous(), out.Z.contiguous(), out.m.contiguous()


def _start_state_grad(q, k, o, go, local, cu, plan, order, scale, backend) -> tuple[Tensor, Tensor]:
    """``dL/dS_0, dL/dZ_0`` of the local pass for its first piece's start state ``(S_0, Z_0, m_0)``:

    ``o_i = N_i / D_i`` with ``N_i = A_i + sum_n f_n(x_i) S_0n exp(m_i - m_0)``, so ``dL/dS_0n = sum_i c_i f_n(x_i)``
    and ``dL/dZ_0n = -sum_i c_i o_i f_n(x_i)`` with ``c_i = g_i exp(m_i - m_0) / D_i``. The local pass on zero
    values from the start state ``(Z_0, Z_0, m_0)`` returns ``Q_i / D_i`` with ``Q_i = exp(m_i - m_0) R_i``,
    ``R_i = sum_n f_n(x_i) Z_0n``: so ``c_i = g_i (Q_i / D_i) / R_i``, with the backend's own ``D_i``.
    """
    B, T, H, D = q.shape
    H_kv = k.shape[2]
    G = H // H_kv
    cdt = checks.state_dtype(q.dtype)
    end = T if not plan.packed else int(cu[1])
    Z0 = local.Z[:1] if plan.packed else local.Z
    probe = EAState(local.Z.clone(), local.Z.clone(), local.m.clone())
    ratio, _ = ea_attention(q, k, torch.zeros_like(k), order=order, scale=scale, initial_state=probe,
                            cu_seqlens=cu, backend=backend)
    Zq = gqa.broadcast(Z0, G, 1).transpose(-1, -2)[:, None]  # [b, 1, H, D, t+1]
    dS = torch.zeros(Zq.shape[0], H, D, order + 1, dtype=cdt, device=q.device)
    dZ = torch.zeros_like(dS)
    r = math.sqrt(scale)
    step = chunk_of(q)
    for s in range(0, end, step):
        e = min(end, s + step)
        f = features(q[:, s:e].to(cdt) * r, order)  # [b, c, H, D, t+1]
        R = (f * Zq).sum(-1)
        c = torch.where(R == 0, torch.zeros_like(R), go[:, s:e].to(cdt) * ratio[:, s:e].to(cdt) / R)
        dS += (c[..., None] * f).sum(1)
        dZ -= ((c * o[:, s:e].to(cdt))[..., None] * f).sum(1)
    fold = (Zq.shape[0], H_kv, G, D, order + 1)
    return (dS.view(fold).sum(2).transpose(-1, -2), dZ.view(fold).sum(2).transpose(-1, -2))


class _GlobalAttention(torch.autograd.Function):
    """Non-causal EA over all ranks: the full sums all-reduced, each rank's outputs read from them."""

    @staticmethod
    def forward(ctx, q, k, v, order, scale, comm, H_kv):
        cdt = checks.state_dtype(q.dtype)
        r = math.sqrt(scale)
        y, vv = k.to(cdt) * r, v.to(cdt)
        B, _, H, D = q.shape
        m_local = (y * y).amin(dim=1) if y.shape[1] else torch.full((B, H_kv, D), math.inf, dtype=cdt,
                                                                     device=q.device)
        m = torch.stack(comm.all_gather(m_local)).amin(0)  # amin keeps a NaN
        local = piece_sums(y, vv, order, m=m)
        S, Z = local.S, local.Z
        SZ = comm.all_reduce_sum(torch.cat([S, Z], dim=2))
        S, Z = SZ[:, :, :order + 1], SZ[:, :, order + 1:]
        ctx.save_for_backward(q, k, v, S, Z, m)
        ctx.meta = (order, scale, comm)
        return _read(q.to(cdt) * r, S, Z, order).to(q.dtype)

    @staticmethod
    def backward(ctx, go):
        q, k, v, S, Z, m = ctx.saved_tensors
        order, scale, comm = ctx.meta
        cdt, r = S.dtype, math.sqrt(scale)
        with torch.enable_grad():
            x = (q.detach().to(cdt) * r).requires_grad_()
            S_, Z_ = S.clone().requires_grad_(), Z.clone().requires_grad_()
            o = _read(x, S_, Z_, order)
            dx, dS, dZ = torch.autograd.grad(o, (x, S_, Z_), go.to(cdt))
        dSZ = comm.all_reduce_sum(torch.cat([dS, dZ], dim=2))  # every rank's outputs read the same sums
        gy, gv = piece_sums_grad(k.to(cdt) * r, v.to(cdt), m, dSZ[:, :, :order + 1], dSZ[:, :, order + 1:])
        return (dx * r).to(q.dtype), (gy * r).to(k.dtype), gv.to(v.dtype), None, None, None, None


def _read(x: Tensor, S: Tensor, Z: Tensor, order: int) -> Tensor:
    """``o = sum f_n(x) S_n / sum f_n(x) Z_n`` for ``x [B, T, H, D]`` from sums of ``H_kv`` heads."""
    G = x.shape[2] // S.shape[1]
    f = features(x, order)
    St, Zt = (gqa.broadcast(t, G, 1).transpose(-1, -2)[:, None] for t in (S, Z))
    return (f * St).sum(-1) / (f * Zt).sum(-1)
