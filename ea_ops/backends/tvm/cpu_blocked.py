"""The causal CPU forward and backward under the ``blocked`` schedule, written as loops: stabilised per block
of steps (docs/math.md section 4 "Per block of steps"; the backward below ``backward``).

The per-step form (``tir_math.scan_step``) rescales the state at every step by ``exp(m' - m)`` for the running
minimum ``m`` of ``y^2``, although the minimum rarely drops. Here each block of ``t_block`` steps of one vector
of channels takes one reference ``c = min(m, min_j y_j^2)`` over the block (a pre-pass over its keys, two
instructions a step): the state is rebased once, ``S, Z *= exp(c - m)``, and every key of the block enters with
``exp(c - y_j^2) <= 1``, no rescale and no select. The exponents stay <= 0, so nothing overflows; a position
before the block's smallest key sees its leading term scaled by ``exp(c - m_i)``, which underflows only when the
minimum falls by more than float32 can carry: a vector whose block would drop by more than ``MAX_SPREAD`` (the
torch backend's float32 limit) runs that block with the per-step form instead, as does the tail of
``T % t_block`` steps. NaN keys are left out of the reference (the min compiles to ``y2 < c ? y2 : c``, which
keeps ``c`` for a NaN ``y2``) and still turn every later output NaN, never an earlier one.

Inside a stabilised block the state is kept in the monomial basis ``A_n = sum_j e_j y_j^n v_j`` (the public
``S_n = gamma_n A_n``, ``gamma_n = sqrt(2)^n / sqrt(n!)``): the keys' powers ``y^n`` are shared by ``S`` and ``Z``
and carry no constant, and the query side's Horner steps ``2 x / n`` hold all of them (``f_n(x) gamma_n =
(2 x)^n / n!``). A vector changes basis when it enters its first stabilised block and goes back before a per-step
block and at the end. docs/measurements.md section 14 counts the instructions of both forms.

Arguments and layout: ``cpu_kernels`` (``args.table("forward", True)``); the loops are those of
``schedule.py``'s ``blocked``: ``parallel(b, h_o) > t_o > h_i > d_o > t_i > vector(d_i)``.
"""

from __future__ import annotations

import math

from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from . import tir_math as tm
from .cpu_kernels import _load, _Sig, _store, scan_row
from .tir_math import F32, let

MAX_SPREAD = 60.0  # largest drop of the minimum within a block the stabilised form takes (exp(-60) is normal)


def _gamma(n: int) -> float:
    return math.sqrt(2.0) ** n / math.sqrt(math.factorial(n))


def forward(order: int, dtype: str, H: int, D: int, cfg: dict, static: dict | None = None) -> tirx.PrimFunc:
    """The causal forward for a validated ``blocked`` config (``h_tile``, ``d_tile``, ``t_block``, ``t_unroll``,
    ``parallel``); ``static`` as in ``cpu_kernels.build_func``."""
    h_tile, d_tile, block, unroll = cfg["h_tile"], cfg["d_tile"], cfg["t_block"], cfg["t_unroll"]
    t1, n_vec = order + 1, D // d_tile
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("main")
            T.func_attr({"tirx.noalias": True})
            sig = _Sig(H, D, order, static, align=block)
            a = sig.declare("forward", True, dtype)
            S, Z, r = a["S"], a["Z"], a["r"]
            steps = [let(f"qs{n}", r * tm.const(2.0 / n)) for n in range(1, t1)]  # x g_n = q (2 r / n)
            main = (sig.T // block) * block
            tasks = sig.B * (H // h_tile)
            loop = T.parallel if cfg["parallel"] else T.serial
            with loop(tasks) as task:
                b = task // (H // h_tile)
                h0 = (task % (H // h_tile)) * h_tile
                mono = T.alloc_buffer((h_tile * n_vec,), "int32", scope="local")
                bm = T.alloc_buffer((d_tile,), F32, scope="local")
                flag = T.alloc_buffer((1,), "int32", scope="local")
                keys = T.alloc_buffer((block, 2, d_tile), F32, scope="local")
                with T.serial(h_tile * n_vec) as i:
                    T.buffer_store(mono, 0, [i])
                with T.serial(sig.T // block) as tb:
                    with T.serial(h_tile) as hi:
                        with T.serial(n_vec) as do:
                            h, vec, t0 = h0 + hi, hi * n_vec + do, tb * block
                            _block(order, a, locals_=(mono, bm, flag, keys), b=b, h=h, vec=vec, t0=t0, do=do,
                                   d_tile=d_tile, block=block, unroll=unroll, steps=steps)
                with T.serial(h_tile) as hi:  # back to the public basis
                    with T.serial(n_vec) as do:
                        with T.If(mono[hi * n_vec + do] != 0):
                            with T.Then():
                                _rebase(S, Z, b, h0 + hi, do, d_tile, t1, [tm.const(_gamma(n)) for n in range(t1)])
            # The last T % t_block steps: per step, one vector per task (the d_t layout).
            with loop(sig.B * H * n_vec) as task:
                b, h, do = task // (H * n_vec), task % (H * n_vec) // n_vec, task % n_vec
                with T.serial(sig.T - main) as t:
                    with T.vectorized(d_tile) as di:
                        scan_row(a, order, b, main + t, h, do * d_tile + di, output=True)
    return ib.get()


def _rebase(S, Z, b, h, do, d_tile: int, t1: int, factors: list) -> None:
    """``S_n, Z_n *= factors[n]`` for one vector of channels (``factors`` scalars or vector expressions)."""
    with T.vectorized(d_tile) as di:
        _scale(S, Z, b, h, do * d_tile + di, factors)


def _scale(S, Z, b, h, d, factors: list) -> None:
    """``S_n, Z_n *= factors[n]`` at channel ``d`` (inside a vectorised loop)."""
    for n, f in enumerate(factors):
        T.buffer_store(S, S[b, h, n, d] * f, [b, h, n, d])
        T.buffer_store(Z, Z[b, h, n, d] * f, [b, h, n, d])


def _block_reference(a: dict, bm, flag, keys, *, b, h, t0, do, d_tile: int, block: int, spread: float) -> None:
    """The pre-pass of one block of one vector of channels: the keys ``y = r k`` and ``y^2`` into ``keys [block, 2,
    d_tile]`` (the stabilised steps read them there: the pre-pass's square is theirs), ``bm`` the block's
    smallest ``y^2`` (NaN keys left out), ``flag[0]`` 1 when any lane's minimum falls by more than ``spread``
    within the block (run it per step)."""
    k, M = a["k"], a["M"]
    with T.vectorized(d_tile) as di:
        T.buffer_store(bm, tm.const(math.inf), [di])
    with T.serial(block) as j:
        with T.vectorized(d_tile) as di:
            y = let("yk", _load(k, b, t0 + j, h, do * d_tile + di) * a["r"])
            y2 = let("yk2", y * y)
            T.buffer_store(keys, y, [j, 0, di])
            T.buffer_store(keys, y2, [j, 1, di])
            # LLVM gets select(y2 < bm, y2, bm) (vminps), which keeps bm for a NaN key (test_tvm_blocked)
            T.buffer_store(bm, T.min(y2, bm[di]), [di])
    T.buffer_store(flag, 0, [0])
    with T.serial(d_tile) as di:  # scalar, once a block
        m_old = let("m_old", M[b, h, do * d_tile + di])
        c = let("c", T.min(bm[di], m_old))
        drop = T.min(keys[0, 1, di], m_old) - c
        over = tirx.Select(drop > tm.const(spread), tirx.const(1, "int32"), tirx.const(0, "int32"))
        T.buffer_store(flag, T.max(flag[0], over), [0])


def _block(order: int, a: dict, *, locals_, b, h, vec, t0, do, d_tile: int, block: int, unroll: int,
           steps: list) -> None:
    """One block of ``block`` steps of one vector of channels: stabilised once, or per step if it must be."""
    mono, bm, flag, keys = locals_
    M, S, Z = a["M"], a["S"], a["Z"]
    t1 = order + 1
    _block_reference(a, bm, flag, keys, b=b, h=h, t0=t0, do=do, d_tile=d_tile, block=block, spread=MAX_SPREAD)
    with T.If(flag[0] != 0):
        with T.Then():
            with T.If(mono[vec] != 0):
                with T.Then():
                    _rebase(S, Z, b, h, do, d_tile, t1, [tm.const(_gamma(n)) for n in range(t1)])
            T.buffer_store(mono, 0, [vec])
            with T.serial(block) as j:
                with T.vectorized(d_tile) as di:
                    scan_row(a, order, b, t0 + j, h, do * d_tile + di, output=True)
        with T.Else():
            with T.vectorized(d_tile) as di:  # rebase to the block's reference (and into the monomial basis)
                d = do * d_tile + di
                m_old = let("m_old", M[b, h, d])
                c = let("c", T.min(bm[di], m_old))
                e = tm.exp_neg(c - m_old, "ea")
                was = mono[vec] != 0
                for n in range(t1):
                    f = let(f"f{n}", tirx.Select(was, e, e * tm.const(1.0 / _gamma(n))))
                    T.buffer_store(S, S[b, h, n, d] * f, [b, h, n, d])
                    T.buffer_store(Z, Z[b, h, n, d] * f, [b, h, n, d])
                T.buffer_store(M, c, [b, h, d])
            T.buffer_store(mono, 1, [vec])
            with T.serial(block // unroll) as jo:
                with T.unroll(unroll) as ji:
                    with T.vectorized(d_tile) as di:
                        j = jo * unroll + ji
                        _fast_step(order, a, b, t0 + j, h, do * d_tile + di, steps, keys[j, 0, di], keys[j, 1, di])


def _fast_step(order: int, a: dict, b, t, h, d, steps: list, y, y2) -> None:
    """One position of a stabilised block: the key ``y`` (``y2 = y^2``, from the pre-pass) enters with
    ``exp(c - y^2)`` (``c = M``, the block's reference; floored at exp(-86), no select) into the monomial-basis
    state, and the query reads it with Horner steps ``q (2 r / n)``."""
    S, Z = a["S"], a["Z"]
    t1 = order + 1
    y = let("y", y)
    vv = let("v", _load(a["v"], b, t, h, d))
    e = tm.exp_neg(a["M"][b, h, d] - y2, "e", floor=True)
    ev = let("ev", e * vv)
    powers = _powers(y, order, "y", y2)
    A, B = [], []
    for n in range(t1):
        s_n = let(f"A{n}", S[b, h, n, d] + ev if n == 0 else tm.fma(ev, powers[n], S[b, h, n, d]))
        z_n = let(f"B{n}", Z[b, h, n, d] + e if n == 0 else tm.fma(e, powers[n], Z[b, h, n, d]))
        T.buffer_store(S, s_n, [b, h, n, d])
        T.buffer_store(Z, z_n, [b, h, n, d])
        A.append(s_n)
        B.append(z_n)
    qq = let("q", _load(a["q"], b, t, h, d))
    g = [None] + [let(f"g{n}", qq * steps[n - 1]) for n in range(1, t1)]
    num = let("num", tm.horner(g, A))
    den = let("den", tm.horner(g, B))
    _store(a["o"], num / den, b, t, h, d)


# ---------------------------------------------------------------------------------------------- backward
# The causal backward's re-scan takes the forward's blocks; its per-position reference (``MM``, what ``C = g/den``
# and ``CO`` are scaled by) is then the block's reference, constant in a block and still non-increasing in t, so
# the reverse scan rebases its sums once per block and its steps add without an exponential. ``C`` grows like
# ``exp(drop)`` where a block's minimum falls by ``drop`` (the first positions' denominators shrink by as much),
# and the reverse sums multiply it by ``(2x)^n``: ``MAX_SPREAD_GRAD`` keeps ``exp(drop)`` at 1e13 so that
# gradients up to about 1e10 stay finite; a block that falls further runs per step.
MAX_SPREAD_GRAD = 30.0


def backward(order: int, dtype: str, H: int, D: int, cfg: dict, static: dict | None = None) -> tirx.PrimFunc:
    """The causal backward for a validated ``blocked`` config: the re-scan (``dq``, scratch ``C, CO, MM``) in
    blocks of ``t_block`` steps, then the reverse scan (``dk, dv``) over the same blocks from the last; both in
    the monomial basis (``S_n = gamma_n A_n``; the reverse sums ``U'_n = sum_i C_i (2 x_i)^n``, read by the keys
    with ``y^n / n!``), which the scratch state and sums never leave. Arguments: ``args.table("backward", True)``.
    """
    h_tile, d_tile, block, unroll = cfg["h_tile"], cfg["d_tile"], cfg["t_block"], cfg["t_unroll"]
    t1, n_vec = order + 1, D // d_tile
    with IRBuilder() as ib:
        with T.prim_func():
            T.func_name("main")
            T.func_attr({"tirx.noalias": True})
            sig = _Sig(H, D, order, static, align=block)
            a = sig.declare("backward", True, dtype)
            S, Z, r = a["S"], a["Z"], a["r"]
            c = {
                "r2": let("r2", r * r),
                "two_r": let("two_r", r * tm.const(2.0)),
                "steps": [let(f"qs{n}", r * tm.const(2.0 / n)) for n in range(1, t1)],  # 2 x / n = q (2 r / n)
            }
            n_blocks = sig.T // block
            main = n_blocks * block
            tasks = sig.B * (H // h_tile)
            loop = T.parallel if cfg["parallel"] else T.serial
            with loop(tasks) as task:  # the re-scan's blocks
                b = task // (H // h_tile)
                h0 = (task % (H // h_tile)) * h_tile
                bm = T.alloc_buffer((d_tile,), F32, scope="local")
                flag = T.alloc_buffer((1,), "int32", scope="local")
                keys = T.alloc_buffer((block, 2, d_tile), F32, scope="local")
                with T.serial(h_tile) as hi:  # into the monomial basis, once
                    with T.serial(n_vec) as do:
                        _rebase(S, Z, b, h0 + hi, do, d_tile, t1, [tm.const(1.0 / _gamma(n)) for n in range(t1)])
                with T.serial(n_blocks) as tb:
                    with T.serial(h_tile) as hi:
                        with T.serial(n_vec) as do:
                            _rescan_block(order, a, c, (bm, flag, keys), b=b, h=h0 + hi, t0=tb * block, do=do,
                                          d_tile=d_tile, block=block, unroll=unroll)
            with loop(sig.B * H * n_vec) as task:  # the re-scan's last T % t_block steps, per step
                b, h, do = task // (H * n_vec), task % (H * n_vec) // n_vec, task % n_vec
                with T.serial(sig.T - main) as t:
                    with T.vectorized(d_tile) as di:
                        _rescan_step(order, a, c, b, main + t, h, do * d_tile + di)
            with loop(sig.B * H * n_vec) as task:  # the reverse scan starts with those steps, from the last
                b, h, do = task // (H * n_vec), task % (H * n_vec) // n_vec, task % n_vec
                with T.serial(sig.T - main) as t:
                    with T.vectorized(d_tile) as di:
                        _reverse_step(order, a, c, b, sig.T - 1 - t, h, do * d_tile + di)
            with loop(tasks) as task:  # then the blocks, from the last
                b = task // (H // h_tile)
                h0 = (task % (H // h_tile)) * h_tile
                flag = T.alloc_buffer((1,), "int32", scope="local")
                with T.serial(n_blocks) as tb:
                    with T.serial(h_tile) as hi:
                        with T.serial(n_vec) as do:
                            _reverse_block(order, a, c, flag, b=b, h=h0 + hi, t0=(n_blocks - 1 - tb) * block,
                                           do=do, d_tile=d_tile, block=block, unroll=unroll)
    return ib.get()


def _rescan_block(order: int, a: dict, c: dict, locals_, *, b, h, t0, do, d_tile: int, block: int,
                  unroll: int) -> None:
    """One block of the re-scan for one vector of channels: stabilised once, or per step if it must be."""
    bm, flag, keys = locals_
    M, S, Z = a["M"], a["S"], a["Z"]
    _block_reference(a, bm, flag, keys, b=b, h=h, t0=t0, do=do, d_tile=d_tile, block=block,
                     spread=MAX_SPREAD_GRAD)
    with T.If(flag[0] != 0):
        with T.Then():
            with T.serial(block) as j:
                with T.vectorized(d_tile) as di:
                    _rescan_step(order, a, c, b, t0 + j, h, do * d_tile + di)
        with T.Else():
            with T.vectorized(d_tile) as di:  # rebase to the block's reference
                d = do * d_tile + di
                m_old = let("m_old", M[b, h, d])
                ref = let("c", T.min(bm[di], m_old))
                e = tm.exp_neg(ref - m_old, "ea")
                _scale(S, Z, b, h, d, [e] * (order + 1))
                T.buffer_store(M, ref, [b, h, d])
            with T.serial(block // unroll) as jo:
                with T.unroll(unroll) as ji:
                    with T.vectorized(d_tile) as di:
                        j = jo * unroll + ji
                        _rescan_fast(order, a, c, b, t0 + j, h, do * d_tile + di, keys[j, 0, di], keys[j, 1, di])


def _powers(y, order: int, name: str, y2=None) -> list:
    """``[None, y, y^2, ..., y^t]`` (``y2``: ``y^2`` when already at hand)."""
    out = [None, y]
    for n in range(2, order + 1):
        out.append(let(f"{name}{n}", y2 if n == 2 and y2 is not None else out[-1] * y))
    return out


def _absorb(order: int, a: dict, b, h, d, ev, e, powers, scale=None) -> tuple[list, list]:
    """``A_n = A_n s + ev y^n``, ``B_n = B_n s + e y^n`` (``s``: the rescale, None for 1); the new values."""
    S, Z = a["S"], a["Z"]
    A, B = [], []
    for n in range(order + 1):
        s_old, z_old = S[b, h, n, d], Z[b, h, n, d]
        if scale is not None:
            s_old, z_old = s_old * scale, z_old * scale
        s_n = let(f"A{n}", s_old + ev if n == 0 else tm.fma(ev, powers[n], s_old))
        z_n = let(f"B{n}", z_old + e if n == 0 else tm.fma(e, powers[n], z_old))
        T.buffer_store(S, s_n, [b, h, n, d])
        T.buffer_store(Z, z_n, [b, h, n, d])
        A.append(s_n)
        B.append(z_n)
    return A, B


def _rescan_fast(order: int, a: dict, c: dict, b, t, h, d, y, y2) -> None:
    """One position of a stabilised re-scan block: the key ``y`` (``y2``, from the pre-pass) enters with
    ``exp(ref - y^2)`` (floored at exp(-86), as the forward's); then ``dq``."""
    y = let("y", y)
    vv = let("v", _load(a["v"], b, t, h, d))
    ref = let("ref", a["M"][b, h, d])
    e = tm.exp_neg(ref - y2, "e", floor=True)
    A, B = _absorb(order, a, b, h, d, let("ev", e * vv), e, _powers(y, order, "y", y2))
    _rescan_query(order, a, c, b, t, h, d, A, B, ref)


def _rescan_step(order: int, a: dict, c: dict, b, t, h, d) -> None:
    """One position of the re-scan rescaled per step (``tir_math.scan_step``'s rule in the monomial basis)."""
    M = a["M"]
    y = let("y", _load(a["k"], b, t, h, d) * a["r"])
    vv = let("v", _load(a["v"], b, t, h, d))
    m = let("m", M[b, h, d])
    y2 = let("y2", y * y)
    e = tm.exp_neg(tm.const(0.0) - T.abs(m - y2))
    grow = y2 < m
    rescale = let("a", tm.select(grow, e, tm.const(1.0)))
    w = let("w", tm.select(grow, tm.const(1.0), e))
    m_new = let("m_new", T.min(m, y2))
    T.buffer_store(M, m_new, [b, h, d])
    A, B = _absorb(order, a, b, h, d, let("wv", w * vv), w, _powers(y, order, "y"), scale=rescale)
    _rescan_query(order, a, c, b, t, h, d, A, B, m_new)


def _rescan_query(order: int, a: dict, c: dict, b, t, h, d, A: list, B: list, ref) -> None:
    """``dq`` and the scratch at one position from the monomial state ``A, B`` (reference ``ref``):
    ``N(x) = sum (2x)^n / n! A_n`` by Horner steps ``2x/n``, ``N'(x) = 2 sum (2x)^n / n! A_{n+1}``;
    ``dq = 2 r C (H_A - o H_B)`` with ``C = g / den``, ``o = N / den``."""
    qq = let("q", _load(a["q"], b, t, h, d))
    g = [None] + [let(f"g{n}", qq * c["steps"][n - 1]) for n in range(1, order + 1)]
    inv = let("inv", tm.const(1.0) / tm.horner(g, B))
    o = let("o", tm.horner(g, A) * inv)
    cc = let("cg", _load(a["g"], b, t, h, d) * inv)
    if order:
        dq = cc * tm.fma(tm.const(0.0) - o, tm.horner(g[:order], B[1:]), tm.horner(g[:order], A[1:])) * c["two_r"]
    else:
        dq = tm.const(0.0) * cc
    _store(a["dq"], dq, b, t, h, d)
    T.buffer_store(a["C"], cc, [b, t, h, d])
    T.buffer_store(a["CO"], cc * o, [b, t, h, d])
    T.buffer_store(a["MM"], ref, [b, t, h, d])


def _reverse_block(order: int, a: dict, c: dict, flag, *, b, h, t0, do, d_tile: int, block: int,
                   unroll: int) -> None:
    """One block of the reverse scan for one vector of channels, from its last position: the sums rebased once
    to the block's reference where ``MM`` is constant over the block (it is non-increasing, so its ends tell),
    else per step."""
    MM, MN, U, W = a["MM"], a["MN"], a["U"], a["W"]
    last = t0 + block - 1
    T.buffer_store(flag, 0, [0])
    with T.serial(d_tile) as di:
        d = do * d_tile + di
        same = MM[b, t0, h, d] == MM[b, last, h, d]
        T.buffer_store(flag, T.max(flag[0], tirx.Select(same, tirx.const(0, "int32"), tirx.const(1, "int32"))),
                       [0])
    with T.If(flag[0] != 0):
        with T.Then():
            with T.serial(block) as j:
                with T.vectorized(d_tile) as di:
                    _reverse_step(order, a, c, b, last - j, h, do * d_tile + di)
        with T.Else():
            with T.vectorized(d_tile) as di:
                d = do * d_tile + di
                ref = let("ref", MM[b, last, h, d])
                e = tm.exp_neg(MN[b, h, d] - ref, "ea")
                _scale(U, W, b, h, d, [e] * (order + 1))
                T.buffer_store(MN, ref, [b, h, d])
            with T.serial(block // unroll) as jo:
                with T.unroll(unroll) as ji:
                    with T.vectorized(d_tile) as di:
                        _reverse_pos(order, a, c, b, last - (jo * unroll + ji), h, do * d_tile + di, None)


def _reverse_step(order: int, a: dict, c: dict, b, t, h, d) -> None:
    """One position of the reverse scan rescaled per step: ``U' *= exp(MN - MM_t)`` first."""
    MN = a["MN"]
    mj = let("mj", a["MM"][b, t, h, d])
    # MM is non-increasing in t, so MN - mj <= 0; MN starts at -inf (U' = W' = 0).
    rescale = tm.exp_neg(MN[b, h, d] - mj, "a")
    T.buffer_store(MN, mj, [b, h, d])
    _reverse_pos(order, a, c, b, t, h, d, rescale)


def _reverse_pos(order: int, a: dict, c: dict, b, t, h, d, rescale) -> None:
    """Add position ``t``'s query to the sums ``U'_n += C (2x)^n``, ``W'_n += C o (2x)^n`` (after ``rescale``,
    None for 1), then ``dk, dv`` of its key: ``dv = e sum y^n/n! U'_n``, ``dy = e sum (h_n' - 2 y h_n) P_n`` with
    ``h_n = y^n / n!`` (``h_n' = h_{n-1}``), ``P_n = v U'_n - W'_n``, ``e = exp(MN - y^2)``."""
    U, W, MN = a["U"], a["W"], a["MN"]
    x2 = let("x2", _load(a["q"], b, t, h, d) * c["two_r"])
    cf = tm.chain(let("cc", a["C"][b, t, h, d]), [None] + [x2] * order, "cf")
    cof = tm.chain(let("co", a["CO"][b, t, h, d]), [None] + [x2] * order, "cof")
    Un, Wn = [], []
    for n in range(order + 1):
        u_old, w_old = U[b, h, n, d], W[b, h, n, d]
        u_n = let(f"U{n}", u_old + cf[n] if rescale is None else tm.fma(u_old, rescale, cf[n]))
        w_n = let(f"W{n}", w_old + cof[n] if rescale is None else tm.fma(w_old, rescale, cof[n]))
        T.buffer_store(U, u_n, [b, h, n, d])
        T.buffer_store(W, w_n, [b, h, n, d])
        Un.append(u_n)
        Wn.append(w_n)
    y = let("y", _load(a["k"], b, t, h, d) * a["r"])
    vv = let("v", _load(a["v"], b, t, h, d))
    e = tm.exp_neg(MN[b, h, d] - y * y, "ek")
    gy = [None] + [y * tm.const(1.0 / n) if n > 1 else y for n in range(1, order + 1)]
    gy = [None] + [let(f"gk{n}", x) for n, x in enumerate(gy[1:], start=1)]
    P = [let(f"P{n}", tm.fma(vv, Un[n], tm.const(0.0) - Wn[n])) for n in range(order + 1)]
    dv = e * tm.horner(gy, Un)
    lead = tm.horner(gy[:order], P[1:]) if order else tm.const(0.0)
    dy = e * tm.fma(tm.const(-2.0) * y, tm.horner(gy, P), lead)
    _store(a["dk"], dy * a["r"], b, t, h, d)
    _store(a["dv"], dv, b, t, h, d)
