"""The EA-t kernels for CUDA GPUs: the same math (``tir_math``) and arguments as the CPU kernels.

Two forms (docs/design.md: a scan over T has only B*H*D independent lanes):

- ``scan``: one thread per channel ``(b, h, d)``; the time loop sits inside the block, with the
  running state in per-thread ``local`` arrays indexed by constants, i.e. registers. No schedule can
  reorder a loop inside a block, so the scan keeps its order. State buffers that a block reads and
  writes back are declared as written only (an overlap of reads and writes makes TVM refuse to bind
  the block to threads: "not compact dataflow").
- ``chunked`` (causal forward): T split in chunks of ``L``; one thread per (channel, chunk) sums its chunk
  (``chunk_state``), one thread per channel combines the chunk sums into exclusive prefixes
  (``chunk_prefix``, stabilised like a scan step), and one thread per (channel, chunk) re-scans its chunk
  from its prefix to write outputs (``chunk_out``). Extra arguments ``SC, ZC [B, H, NC, t+1, D]`` and
  ``MC [B, H, NC, D]`` (scratch, ``NC = ceil(T / L)``) follow ``M``. The untuned default picks it when
  there are fewer than 2^17 channels, too few threads to hide memory latency.

The schedule fuses the channel (and chunk) axes and binds them to ``blockIdx.x`` / ``threadIdx.x``.
Built here without a GPU (``ea-ops compile --target cuda:sm_90``); running them needs a CUDA build of TVM.
"""

from __future__ import annotations

import tvm
from tvm import s_tir, tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from ..common import CHUNKED
from . import tir_math as tm
from .cpu_kernels import _load, _Sig, _store, grad_key_row, rescan_row
from .cuda_device import default_config  # noqa: F401  (chosen without TVM; the tuner reads it here)
from .tir_math import F32, StateRef, let


def _local_state(t1: int, prefix: str = ""):
    S = T.sblock_alloc_buffer((t1,), F32, scope="local")
    Z = T.sblock_alloc_buffer((t1,), F32, scope="local")
    M = T.sblock_alloc_buffer((1,), F32, scope="local")
    bufs = {"S": S, "Z": Z}
    ref = StateRef(
        load=lambda w, n: bufs[w][n],
        store=lambda w, n, val: T.buffer_store(bufs[w], val, [n]),
        load_m=lambda: M[0],
        store_m=lambda val: T.buffer_store(M, val, [0]),
    )
    return S, Z, M, ref


def _copy_state(dst, src_load, t1):
    for n in range(t1):
        T.buffer_store(dst, src_load(n), [n])


def _channel_block(sig: _Sig, name: str, reads: list, writes: list, body):
    with T.grid(sig.B, sig.H, sig.D) as (b, h, d):
        with T.sblock(name):
            vb = T.axis.spatial(sig.B, b)
            vh = T.axis.spatial(sig.H, h)
            vd = T.axis.spatial(sig.D, d)
            T.reads(*[r(vb, vh, vd) for r in reads])
            T.writes(*[w(vb, vh, vd) for w in writes])
            body(vb, vh, vd)


def _seq(buf, sig):
    return lambda b, h, d: buf[b, 0:sig.T, h, d]


def _st(buf, sig):
    return lambda b, h, d: buf[b, h, 0:sig.t1, d]


def _m(buf):
    return lambda b, h, d: buf[b, h, d]


def _prim(order, dtype, H, D, static, build):
    with tm.unfused(), IRBuilder() as ib:
        with T.prim_func(s_tir=True):
            T.func_name("main")
            T.func_attr({"tirx.noalias": True})
            sig = _Sig(H, D, order, static)
            build(sig)
    return ib.get()


def channel_forward(order: int, dtype: str, causal: bool, H: int, D: int, static=None) -> tirx.PrimFunc:
    t1 = order + 1

    def build(sig):
        a = sig.declare("forward", causal, dtype)
        q, k, v, o, S, Z, M, r = (a[n] for n in ("q", "k", "v", "o", "S", "Z", "M", "r"))

        def body(b, h, d):
            Sl, Zl, Ml, ref = _local_state(t1)
            if causal:
                _copy_state(Sl, lambda n: S[b, h, n, d], t1)
                _copy_state(Zl, lambda n: Z[b, h, n, d], t1)
                T.buffer_store(Ml, M[b, h, d], [0])
            else:
                _copy_state(Sl, lambda n: tm.const(0.0), t1)
                _copy_state(Zl, lambda n: tm.const(0.0), t1)
                T.buffer_store(Ml, tm.const(float("inf")), [0])
            with T.serial(0, sig.T) as t:
                y = let("y", _load(k, b, t, h, d) * r)
                vv = let("v", _load(v, b, t, h, d))
                s_new, z_new, _ = tm.scan_step(ref, y, vv, order)
                if causal:
                    x = let("x", _load(q, b, t, h, d) * r)
                    _store(o, tm.output(x, s_new, z_new, order)[0], b, t, h, d)
            if not causal:
                with T.serial(0, sig.T) as t:
                    Sn, Zn = tm.load_state(ref, order)
                    x = let("x", _load(q, b, t, h, d) * r)
                    _store(o, tm.output(x, Sn, Zn, order)[0], b, t, h, d)
            for n in range(t1):
                T.buffer_store(S, Sl[n], [b, h, n, d])
                T.buffer_store(Z, Zl[n], [b, h, n, d])
            T.buffer_store(M, Ml[0], [b, h, d])

        _channel_block(sig, "scan", [_seq(q, sig), _seq(k, sig), _seq(v, sig)],
                       [_seq(o, sig), _st(S, sig), _st(Z, sig), _m(M)], body)

    return _prim(order, dtype, H, D, static, build)


def chunked_forward(order: int, dtype: str, H: int, D: int, chunk: int, static=None) -> tirx.PrimFunc:
    """The causal forward split in chunks of ``chunk`` time steps (module docstring)."""
    t1 = order + 1
    L = int(chunk)

    def build(sig):
        q, k, v, o = (sig.buffer(n, "seq", dtype) for n in ("q", "k", "v", "o"))
        S, Z, M = sig.buffer("S", "state"), sig.buffer("Z", "state"), sig.buffer("M", "m")
        if static and "T" in static:
            NC = (int(static["T"]) + L - 1) // L
        else:
            NC = T.int32()
            IRBuilder.name("NC", NC)
        hs = {n: T.arg(n, T.handle()) for n in ("SC", "ZC", "MC")}
        SC = T.match_buffer(hs["SC"], (sig.B, sig.H, NC, t1, sig.D), F32, align=4, offset_factor=1)
        ZC = T.match_buffer(hs["ZC"], (sig.B, sig.H, NC, t1, sig.D), F32, align=4, offset_factor=1)
        MC = T.match_buffer(hs["MC"], (sig.B, sig.H, NC, sig.D), F32, align=4, offset_factor=1)
        for nm, bf in (("SC", SC), ("ZC", ZC), ("MC", MC)):
            IRBuilder.name(nm, bf)
        r = sig.scalar("r")

        def chunk_grid(name, body, reads, writes):
            with T.grid(sig.B, sig.H, NC, sig.D) as (b, h, c, d):
                with T.sblock(name):
                    vb = T.axis.spatial(sig.B, b)
                    vh = T.axis.spatial(sig.H, h)
                    vc = T.axis.spatial(NC, c)
                    vd = T.axis.spatial(sig.D, d)
                    T.reads(*[f(vb, vh, vc, vd) for f in reads])
                    T.writes(*[f(vb, vh, vc, vd) for f in writes])
                    body(vb, vh, vc, vd)

        def seq_chunk(buf):
            return lambda b, h, c, d: buf[b, c * L:c * L + L, h, d]

        def cstate(buf):
            return lambda b, h, c, d: buf[b, h, c, 0:t1, d]

        def cm(b, h, c, d):
            return MC[b, h, c, d]

        def chunk_sums(b, h, c, d):
            Sl, Zl, Ml, ref = _local_state(t1)
            _copy_state(Sl, lambda n: tm.const(0.0), t1)
            _copy_state(Zl, lambda n: tm.const(0.0), t1)
            T.buffer_store(Ml, tm.const(float("inf")), [0])
            with T.serial(0, L) as tt:
                t = c * L + tt
                with T.If(t < sig.T):
                    with T.Then():
                        y = let("y", _load(k, b, t, h, d) * r)
                        tm.scan_step(ref, y, let("v", _load(v, b, t, h, d)), order)
            for n in range(t1):
                T.buffer_store(SC, Sl[n], [b, h, c, n, d])
                T.buffer_store(ZC, Zl[n], [b, h, c, n, d])
            T.buffer_store(MC, Ml[0], [b, h, c, d])

        chunk_grid("chunk_state", chunk_sums, [seq_chunk(k), seq_chunk(v)], [cstate(SC), cstate(ZC), cm])

        def prefix(b, h, d):
            Sl, Zl, Ml, _ = _local_state(t1)
            _copy_state(Sl, lambda n: S[b, h, n, d], t1)
            _copy_state(Zl, lambda n: Z[b, h, n, d], t1)
            T.buffer_store(Ml, M[b, h, d], [0])
            with T.serial(0, NC) as c:
                m = let("m", Ml[0])
                mc = let("mc", MC[b, h, c, d])
                m_new = let("m_new", T.min(m, mc))
                a = tm.exp_neg(m_new - m, "a")  # m = +inf (empty prefix) gives 0
                bw = tm.exp_neg(m_new - mc, "b")
                sc = [let(f"sc{n}", SC[b, h, c, n, d]) for n in range(t1)]
                zc = [let(f"zc{n}", ZC[b, h, c, n, d]) for n in range(t1)]
                for n in range(t1):  # this chunk's slot now holds the state before it
                    T.buffer_store(SC, Sl[n], [b, h, c, n, d])
                    T.buffer_store(ZC, Zl[n], [b, h, c, n, d])
                    T.buffer_store(Sl, Sl[n] * a + sc[n] * bw, [n])
                    T.buffer_store(Zl, Zl[n] * a + zc[n] * bw, [n])
                T.buffer_store(MC, m, [b, h, c, d])
                T.buffer_store(Ml, m_new, [0])
            for n in range(t1):
                T.buffer_store(S, Sl[n], [b, h, n, d])
                T.buffer_store(Z, Zl[n], [b, h, n, d])
            T.buffer_store(M, Ml[0], [b, h, d])

        _channel_block(sig, "chunk_prefix", [],
                       [_st(S, sig), _st(Z, sig), _m(M), lambda b, h, d: SC[b, h, 0:NC, 0:t1, d],
                        lambda b, h, d: ZC[b, h, 0:NC, 0:t1, d], lambda b, h, d: MC[b, h, 0:NC, d]], prefix)

        def chunk_out(b, h, c, d):
            Sl, Zl, Ml, ref = _local_state(t1)
            _copy_state(Sl, lambda n: SC[b, h, c, n, d], t1)
            _copy_state(Zl, lambda n: ZC[b, h, c, n, d], t1)
            T.buffer_store(Ml, MC[b, h, c, d], [0])
            with T.serial(0, L) as tt:
                t = c * L + tt
                with T.If(t < sig.T):
                    with T.Then():
                        y = let("y", _load(k, b, t, h, d) * r)
                        s_new, z_new, _ = tm.scan_step(ref, y, let("v", _load(v, b, t, h, d)), order)
                        x = let("x", _load(q, b, t, h, d) * r)
                        _store(o, tm.output(x, s_new, z_new, order)[0], b, t, h, d)

        chunk_grid("chunk_out", chunk_out, [seq_chunk(q), seq_chunk(k), seq_chunk(v), cstate(SC), cstate(ZC), cm],
                   [seq_chunk(o)])

    return _prim(order, dtype, H, D, static, build)


def channel_backward(order: int, dtype: str, causal: bool, H: int, D: int, static=None) -> tirx.PrimFunc:
    """The backward with one thread per channel; arguments as ``kernels.backward``."""
    t1 = order + 1

    def build(sig):
        # U, W, MN: the CPU kernel's reverse-scan state, kept in registers here; declared (args.table) so
        # that both forms take the same arguments.
        arg = sig.declare("backward", causal, dtype)
        q, k, v, g, S, Z, M, dq, dk, dv, r = (
            arg[n] for n in ("q", "k", "v", "g", "S", "Z", "M", "dq", "dk", "dv", "r"))
        if causal:
            C, CO, MM = (arg[n] for n in ("C", "CO", "MM"))
        seqs = [_seq(b, sig) for b in (q, k, v, g)]
        grads = [_seq(b, sig) for b in (dq, dk, dv)]

        def grad_key_at(b, h, t, d, Ul, Wl, ref_m):
            grad_key_row(arg, order, b, t, h, d, ref_m, [Ul[n] for n in range(t1)], [Wl[n] for n in range(t1)])

        def body(b, h, d):
            Sl, Zl, Ml, ref = _local_state(t1)
            Ul = T.sblock_alloc_buffer((t1,), F32, scope="local")
            Wl = T.sblock_alloc_buffer((t1,), F32, scope="local")
            _copy_state(Ul, lambda n: tm.const(0.0), t1)
            _copy_state(Wl, lambda n: tm.const(0.0), t1)
            if causal:
                _copy_state(Sl, lambda n: S[b, h, n, d], t1)
                _copy_state(Zl, lambda n: Z[b, h, n, d], t1)
                T.buffer_store(Ml, M[b, h, d], [0])
                with T.serial(0, sig.T) as t:
                    rescan_row(arg, ref, order, b, t, h, d)
                MNl = T.sblock_alloc_buffer((1,), F32, scope="local")
                T.buffer_store(MNl, tm.const(float("-inf")), [0])
                with T.serial(0, sig.T) as tr:
                    t = sig.T - 1 - tr
                    mj = let("mj", MM[b, t, h, d])
                    a = tm.exp_neg(MNl[0] - mj, "a")
                    T.buffer_store(MNl, mj, [0])
                    x = let("x", _load(q, b, t, h, d) * r)
                    gx = tm.steps(x, order, "gx")
                    cf = tm.chain(let("c", C[b, t, h, d]), gx, "cf")
                    cof = tm.chain(let("co", CO[b, t, h, d]), gx, "cof")
                    for n in range(t1):
                        T.buffer_store(Ul, Ul[n] * a + cf[n], [n])
                        T.buffer_store(Wl, Wl[n] * a + cof[n], [n])
                    grad_key_at(b, h, t, d, Ul, Wl, mj)
            else:
                _copy_state(Sl, lambda n: tm.const(0.0), t1)
                _copy_state(Zl, lambda n: tm.const(0.0), t1)
                T.buffer_store(Ml, tm.const(float("inf")), [0])
                with T.serial(0, sig.T) as t:
                    y = let("y", _load(k, b, t, h, d) * r)
                    tm.scan_step(ref, y, let("v", _load(v, b, t, h, d)), order)
                with T.serial(0, sig.T) as t:
                    Sn, Zn = tm.load_state(ref, order)
                    x = let("x", _load(q, b, t, h, d) * r)
                    out, den, gx = tm.output(x, Sn, Zn, order)
                    c = let("c", _load(g, b, t, h, d) / den)
                    _store(dq, tm.grad_x(gx, Sn, Zn, out, c) * r, b, t, h, d)
                    cf = tm.chain(c, gx, "cf")
                    cof = tm.chain(let("co", c * out), gx, "cof")
                    for n in range(t1):
                        T.buffer_store(Ul, Ul[n] + cf[n], [n])
                        T.buffer_store(Wl, Wl[n] + cof[n], [n])
                with T.serial(0, sig.T) as t:
                    grad_key_at(b, h, t, d, Ul, Wl, Ml[0])

        writes = grads + ([_seq(C, sig), _seq(CO, sig), _seq(MM, sig)] if causal else [])
        reads = seqs + [_st(S, sig), _st(Z, sig), _m(M)]
        _channel_block(sig, "grad", reads, writes, body)

    return _prim(order, dtype, H, D, static, build)


# ------------------------------------------------------------------------------------------- schedules
def func_for(kernel: str, causal: bool, order: int, dtype: str, H: int, D: int, cfg: dict, static=None):
    if kernel == "backward":
        return channel_backward(order, dtype, causal, H, D, static)
    causal = causal or kernel == "step"
    if cfg["variant"] == CHUNKED and causal:
        return chunked_forward(order, dtype, H, D, cfg["chunk"], static)
    return channel_forward(order, dtype, causal, H, D, static)


def apply(sch: s_tir.Schedule, threads) -> None:
    """Bind every block's spatial loops, fused, to CUDA blocks x threads."""
    for blk in sch.get_child_blocks(sch.get_sblock("root")):
        loops = sch.get_loops(blk)
        fused = sch.fuse(*loops)
        bx, tx = sch.split(fused, factors=[None, threads])
        sch.bind(bx, "blockIdx.x")
        sch.bind(tx, "threadIdx.x")


def scheduled_module(kernel: str, causal: bool, order: int, dtype: str, H: int, D: int,
                     cfg: dict | None = None, static=None) -> tvm.IRModule:
    cfg = cfg or default_config(kernel, causal)
    sch = s_tir.Schedule(func_for(kernel, causal, order, dtype, H, D, cfg, static))
    apply(sch, int(cfg["threads"]))
    return sch.mod
