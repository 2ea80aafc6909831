"""The causal CPU forward under the ``blocked`` schedule, written as loops: stabilised per block of steps.

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
            r2 = let("r2", r * r)
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
                with T.serial(h_tile * n_vec) as i:
                    T.buffer_store(mono, 0, [i])
                with T.serial(sig.T // block) as tb:
                    with T.serial(h_tile) as hi:
                        with T.serial(n_vec) as do:
                            h, vec, t0 = h0 + hi, hi * n_vec + do, tb * block
                            _block(order, a, locals_=(mono, bm, flag), b=b, h=h, vec=vec, t0=t0, do=do,
                                   d_tile=d_tile, block=block, unroll=unroll, r2=r2, steps=steps)
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
        d = do * d_tile + di
        for n in range(t1):
            T.buffer_store(S, S[b, h, n, d] * factors[n], [b, h, n, d])
            T.buffer_store(Z, Z[b, h, n, d] * factors[n], [b, h, n, d])


def _block(order: int, a: dict, *, locals_, b, h, vec, t0, do, d_tile: int, block: int, unroll: int, r2,
           steps: list) -> None:
    """One block of ``block`` steps of one vector of channels: stabilised once, or per step if it must be."""
    mono, bm, flag = locals_
    k, M, S, Z = a["k"], a["M"], a["S"], a["Z"]
    t1 = order + 1
    inf = tm.const(math.inf)
    with T.vectorized(d_tile) as di:
        T.buffer_store(bm, inf, [di])
    with T.serial(block) as j:  # the block's smallest k^2 (NaN keys left out)
        with T.vectorized(d_tile) as di:
            kk = let("kk", _load(k, b, t0 + j, h, do * d_tile + di))
            # LLVM gets select(kk^2 < bm, kk^2, bm) (vminps), which keeps bm for a NaN key (test_tvm_blocked)
            T.buffer_store(bm, T.min(kk * kk, bm[di]), [di])
    T.buffer_store(flag, 0, [0])
    with T.serial(d_tile) as di:  # scalar: does any lane's minimum drop by more than MAX_SPREAD in this block?
        d = do * d_tile + di
        m_old = let("m_old", M[b, h, d])
        y0 = let("y0", _load(k, b, t0, h, d) * a["r"])
        c = let("c", T.min(bm[di] * r2, m_old))
        drop = T.min(y0 * y0, m_old) - c
        over = tirx.Select(drop > tm.const(MAX_SPREAD), tirx.const(1, "int32"), tirx.const(0, "int32"))
        T.buffer_store(flag, T.max(flag[0], over), [0])
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
                c = let("c", T.min(bm[di] * r2, m_old))
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
                        _fast_step(order, a, b, t0 + jo * unroll + ji, h, do * d_tile + di, steps)


def _fast_step(order: int, a: dict, b, t, h, d, steps: list) -> None:
    """One position of a stabilised block: the key enters with ``exp(c - y^2)`` (``c = M``, the block's
    reference) into the monomial-basis state, and the query reads it with Horner steps ``q (2 r / n)``."""
    S, Z, r = a["S"], a["Z"], a["r"]
    t1 = order + 1
    y = let("y", _load(a["k"], b, t, h, d) * r)
    vv = let("v", _load(a["v"], b, t, h, d))
    e = tm.exp_neg(a["M"][b, h, d] - y * y, "e")
    ev = let("ev", e * vv)
    powers = [None, y]
    for n in range(2, t1):
        powers.append(let(f"y{n}", powers[-1] * y))
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
