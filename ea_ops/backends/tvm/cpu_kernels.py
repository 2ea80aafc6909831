"""EA-t kernels for CPUs as TIR (TVM s_tir PrimFuncs), generated per (kernel, order, dtype, H, D).

Layout is the public one, ``[B, T, H, D]`` (zero copy with torch), with ``B`` and ``T`` symbolic and ``H, D``
static; state tensors ``S, Z [B, H, t+1, D]`` and ``m [B, H, D]`` follow ``ea_ops.state.EAState``.

Form ("channel vector"): every block iterates over ``(b, h, t, d)`` with all four axes declared spatial.
The running state lives in the state buffers and is deliberately left out of the block's reads and
writes: declared honestly, TVM sees the scan dependence and refuses to parallelise over channels or
vectorise over ``d`` (docs/findings.md). The price: TVM does not know that ``t`` must run in order, so every
schedule must keep the time loop serial and ascending (``schedule.check_time_loops`` enforces it and the
tests check every schedule the tuner can produce).

Kernels and their arguments: ``args.py`` (one table, read here, by the tuner and by the exporter).
``r = sqrt(scale)``; state buffers are updated in place: the caller passes a copy of the initial state and
receives the final one. The non-causal forward's ``S, Z, M`` are scratch holding the empty state; the causal
backward's ``C = g/den``, ``CO = C o`` and ``MM`` (the running minimum per position) are ``[B, T, H, D]``
float32 scratch, ``U, W`` (zeros) and ``MN`` (``-inf``) the reverse scan's state.
The recurrent step is the causal forward at a static ``T = 1``, taking ``q, k, v, o`` as ``[B, H, D]``.
bfloat16 tensors are passed as int16 views (``tir_math.storage_dtype``).
"""

from __future__ import annotations

from collections.abc import Callable

from tvm import tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from . import args
from . import tir_math as tm
from .tir_math import F32, StateRef, let

KERNELS = ("forward", "backward", "step")
DTYPES = ("float32", "bfloat16", "float16")

# Block names per kernel: every one loops over (b, h, t, d) and must keep t serial and ascending (each has
# a ``TAIL`` block too, see ``_time_block``).
SCAN_BLOCKS = {
    ("forward", True): ("scan",),
    ("forward", False): ("scan", "out"),
    ("backward", True): ("rescan", "reverse"),
    ("backward", False): ("scan", "gradx", "gradkv"),
}


class _Sig:
    """The symbolic shape and the buffers of one PrimFunc under construction."""

    def __init__(self, H: int, D: int, order: int, static: dict | None = None, step: bool = False,
                 align: int | None = None):
        static = dict(static or {})
        self.align = align or TIME_ALIGN
        # The step takes q, k, v, o as [B, H, D] (what the caller holds: no [B, 1, H, D] views per token, each
        # ~0.6 us of torch dispatch), seen inside as [B, 1, H, D] with a static T = 1.
        self.step = step
        if step:
            static["T"] = 1
        self.B = static.get("B") or T.int32()
        self.T = static.get("T") or T.int32()
        self.r = static.get("r")
        if "B" not in static:
            IRBuilder.name("B", self.B)
        if "T" not in static:
            IRBuilder.name("T", self.T)
        self.H, self.D, self.t1 = H, D, order + 1
        self.bufs: dict[str, tirx.Buffer] = {}

    def buffer(self, name: str, kind: str, dtype: str = F32) -> tirx.Buffer:
        shape = {
            "seq": (self.B, self.T, self.H, self.D),
            "state": (self.B, self.H, self.t1, self.D),
            "m": (self.B, self.H, self.D),
        }[kind]
        handle = T.arg(name, T.handle())
        held = (self.B, self.H, self.D) if self.step and kind == "seq" else shape
        # align = element size: torch views (cu_seqlens segments) start anywhere.
        buf = T.match_buffer(handle, held, tm.storage_dtype(dtype), align=tirx_dtype_bytes(dtype),
                             offset_factor=1)
        IRBuilder.name(name, buf)
        self.bufs[name] = buf
        return buf

    def declare(self, kernel: str, causal: bool, dtype: str) -> dict:
        """Every argument of ``kernel`` in the order of ``args.table`` (chunk states excepted): name -> buffer
        or scalar."""
        out = {}
        for name, kind, _ in args.table(kernel, causal):
            if kind == "scalar":
                out[name] = self.scalar(name)
            else:
                out[name] = self.buffer(name, kind, dtype if name in args.DATA else F32)
        if self.step:  # after every argument (a buffer declaration opens a frame): [B, H, D] seen as [B, 1, H, D]
            for name, kind, _ in args.table(kernel, causal):
                if kind == "seq":
                    held = out[name]
                    out[name] = T.decl_buffer((self.B, 1, self.H, self.D), held.dtype, data=held.data,
                                              elem_offset=held.elem_offset)
                    IRBuilder.name(name + "_t", out[name])  # errors name the argument: q, k, v, o
                    self.bufs[name] = out[name]
        return out

    def scalar(self, name: str):
        if self.r is not None:  # a tuning workload: the scale is a constant, every argument a tensor
            return tm.const(self.r)
        var = T.arg(name, T.float32())
        IRBuilder.name(name, var)
        return var


def tirx_dtype_bytes(dtype: str) -> int:
    return 4 if dtype == "float32" else 2


def _state_ref(S, Z, M, b, h, d) -> StateRef:
    bufs = {"S": S, "Z": Z}
    return StateRef(
        load=lambda w, n: bufs[w][b, h, n, d],
        store=lambda w, n, val: T.buffer_store(bufs[w], val, [b, h, n, d]),
        load_m=lambda: M[b, h, d],
        store_m=lambda val: T.buffer_store(M, val, [b, h, d]),
    )


# The time loop runs in two blocks: ``name`` over the first ``T - T % align`` steps and ``name_tail``
# over the rest. ``align`` is a multiple of every unroll factor of ``schedule.T_UNROLLS`` (TIME_ALIGN) and,
# for the time-blocked loop, of its block length (``schedule.time_align``), so neither unrolling nor
# blocking needs a per-step bounds check: with symbolic T the check kept the state out of registers and an
# unrolled backward ran 2x slower than the tuner (static T) had measured.
TIME_ALIGN = 8
TAIL = "_tail"


def _time_block(sig: _Sig, name: str, reads: list, writes: list, body: Callable, reverse: bool = False):
    """Blocks over ``(b, h, t, d)``; ``body(b, h, pos, d)`` with ``pos = t`` or ``T-1-t`` (reverse).

    A static ``T`` divisible by ``sig.align`` (tuning workloads) gets no tail block.
    """
    main = (sig.T // sig.align) * sig.align
    parts = [(name, 0, main)]
    if not (isinstance(sig.T, int) and sig.T % sig.align == 0):
        parts.append((name + TAIL, main, sig.T - main))
    for blk, start, extent in parts:
        with T.grid(sig.B, sig.H, extent, sig.D) as (b, h, t, d):
            with T.sblock(blk):
                vb = T.axis.spatial(sig.B, b)
                vh = T.axis.spatial(sig.H, h)
                vt = T.axis.spatial(extent, t)
                vd = T.axis.spatial(sig.D, d)
                step = vt + start
                pos = sig.T - 1 - step if reverse else step
                T.reads(*[buf[vb, pos, vh, vd] for buf in reads])
                T.writes(*[buf[vb, pos, vh, vd] for buf in writes])
                body(vb, vh, pos, vd)


def _load(buf, b, t, h, d):
    return tm.to_f32(buf[b, t, h, d], buf.dtype)


def _store(buf, val, b, t, h, d):
    T.buffer_store(buf, tm.from_f32(val, buf.dtype), [b, t, h, d])


def scan_row(a: dict, order: int, b, t, h, d, *, output: bool) -> None:
    """One position of the forward scan in the per-step form: absorb the key into the state ``S, Z, M`` and, with
    ``output``, write the causal output ``o`` (the forwards' scan, the non-causal backward's, and ``cpu_blocked``'s
    fallback and tail). ``a``: the kernel's arguments by name (``_Sig.declare``)."""
    r = a["r"]
    y = let("y", _load(a["k"], b, t, h, d) * r)
    vv = let("v", _load(a["v"], b, t, h, d))
    s_new, z_new, _ = tm.scan_step(_state_ref(a["S"], a["Z"], a["M"], b, h, d), y, vv, order)
    if output:
        x = let("x", _load(a["q"], b, t, h, d) * r)
        _store(a["o"], tm.output(x, s_new, z_new, order)[0], b, t, h, d)


def rescan_row(a: dict, ref: StateRef, order: int, b, t, h, d) -> None:
    """One position of the causal backward's forward re-scan (the CPU and CUDA forms share it): absorb the key,
    then ``dq`` and the scratch ``C = g/den``, ``CO = C o``, ``MM`` (the running minimum). ``a``: the kernel's
    arguments by name (``_Sig.declare``)."""
    r = a["r"]
    y = let("y", _load(a["k"], b, t, h, d) * r)
    vv = let("v", _load(a["v"], b, t, h, d))
    s_new, z_new, m_new = tm.scan_step(ref, y, vv, order)
    x = let("x", _load(a["q"], b, t, h, d) * r)
    out, den, gx = tm.output(x, s_new, z_new, order)
    c = let("c", _load(a["g"], b, t, h, d) / den)
    _store(a["dq"], tm.grad_x(gx, s_new, z_new, out, c) * r, b, t, h, d)
    T.buffer_store(a["C"], c, [b, t, h, d])
    T.buffer_store(a["CO"], c * out, [b, t, h, d])
    T.buffer_store(a["MM"], m_new, [b, t, h, d])


def grad_key_row(a: dict, order: int, b, t, h, d, ref_m, Un: list, Wn: list) -> None:
    """``dk, dv`` at one position from the reverse sums ``Un, Wn`` and the stabiliser ``ref_m`` (both forms)."""
    y = let("y", _load(a["k"], b, t, h, d) * a["r"])
    vv = let("v", _load(a["v"], b, t, h, d))
    e = tm.exp_neg(ref_m - y * y, "ek")
    dy, dvv = tm.grad_key(y, vv, e, Un, Wn, order)
    _store(a["dk"], dy * a["r"], b, t, h, d)
    _store(a["dv"], dvv, b, t, h, d)


def _finish(ib: IRBuilder) -> tirx.PrimFunc:
    return ib.get()


def forward(order: int, dtype: str, causal: bool, H: int, D: int, static: dict | None = None,
            step: bool = False, align: int = TIME_ALIGN) -> tirx.PrimFunc:
    """The forward kernel (see the module docstring for its arguments); ``step``: the causal forward at
    ``T = 1`` on ``q, k, v, o [B, H, D]``."""
    with IRBuilder() as ib:
        with T.prim_func(s_tir=True):
            T.func_name("main")
            T.func_attr({"tirx.noalias": True})
            sig = _Sig(H, D, order, static, step=step, align=align)
            a = sig.declare("forward", causal, dtype)
            q, k, v, o, S, Z, M, r = (a[n] for n in ("q", "k", "v", "o", "S", "Z", "M", "r"))

            def scan(b, h, t, d):
                scan_row(a, order, b, t, h, d, output=causal)

            if causal:
                _time_block(sig, "scan", [q, k, v], [o], scan)
            else:
                _time_block(sig, "scan", [k, v], [], scan)

                def out_block(b, h, t, d):
                    Sn, Zn = tm.load_state(_state_ref(S, Z, M, b, h, d), order)
                    x = let("x", _load(q, b, t, h, d) * r)
                    _store(o, tm.output(x, Sn, Zn, order)[0], b, t, h, d)

                _time_block(sig, "out", [q], [o], out_block)
    return _finish(ib)


def backward(order: int, dtype: str, causal: bool, H: int, D: int, static: dict | None = None,
             align: int = TIME_ALIGN) -> tirx.PrimFunc:
    """The backward kernel: a forward re-scan (``dq``), a reverse scan (``dk, dv``); docs/math.md section 5."""
    with IRBuilder() as ib:
        with T.prim_func(s_tir=True):
            T.func_name("main")
            T.func_attr({"tirx.noalias": True})
            sig = _Sig(H, D, order, static, align=align)
            arg = sig.declare("backward", causal, dtype)
            q, k, v, g, S, Z, M, U, W, dq, dk, dv, r = (
                arg[n] for n in ("q", "k", "v", "g", "S", "Z", "M", "U", "W", "dq", "dk", "dv", "r"))
            if causal:
                C, CO, MM, MN = (arg[n] for n in ("C", "CO", "MM", "MN"))
            t1 = order + 1

            def uw_ref(b, h, d):
                return {"U": lambda n: U[b, h, n, d], "W": lambda n: W[b, h, n, d]}

            if causal:
                def rescan(b, h, t, d):
                    rescan_row(arg, _state_ref(S, Z, M, b, h, d), order, b, t, h, d)

                _time_block(sig, "rescan", [q, k, v, g], [dq, C, CO, MM], rescan)

                def reverse(b, h, t, d):
                    mj = let("mj", MM[b, t, h, d])
                    # m is non-increasing in t, so mn - mj <= 0; MN starts at -inf (a = 0, U = W = 0).
                    a = tm.exp_neg(MN[b, h, d] - mj, "a")
                    T.buffer_store(MN, mj, [b, h, d])
                    x = let("x", _load(q, b, t, h, d) * r)
                    gx = tm.steps(x, order, "gx")
                    cf = tm.chain(let("c", C[b, t, h, d]), gx, "cf")
                    cof = tm.chain(let("co", CO[b, t, h, d]), gx, "cof")
                    Un, Wn = [], []
                    for n in range(t1):
                        u_n = let(f"U{n}", U[b, h, n, d] * a + cf[n])
                        w_n = let(f"W{n}", W[b, h, n, d] * a + cof[n])
                        T.buffer_store(U, u_n, [b, h, n, d])
                        T.buffer_store(W, w_n, [b, h, n, d])
                        Un.append(u_n)
                        Wn.append(w_n)
                    grad_key_row(arg, order, b, t, h, d, mj, Un, Wn)

                _time_block(sig, "reverse", [q, k, v, C, CO, MM], [dk, dv], reverse, reverse=True)
            else:
                def scan(b, h, t, d):
                    scan_row(arg, order, b, t, h, d, output=False)

                _time_block(sig, "scan", [k, v], [], scan)

                def gradx(b, h, t, d):
                    Sn, Zn = tm.load_state(_state_ref(S, Z, M, b, h, d), order)
                    x = let("x", _load(q, b, t, h, d) * r)
                    out, den, gx = tm.output(x, Sn, Zn, order)
                    c = let("c", _load(g, b, t, h, d) / den)
                    _store(dq, tm.grad_x(gx, Sn, Zn, out, c) * r, b, t, h, d)
                    cf = tm.chain(c, gx, "cf")
                    cof = tm.chain(let("co", c * out), gx, "cof")
                    for n in range(t1):
                        T.buffer_store(U, U[b, h, n, d] + cf[n], [b, h, n, d])
                        T.buffer_store(W, W[b, h, n, d] + cof[n], [b, h, n, d])

                _time_block(sig, "gradx", [q, g], [dq], gradx)

                def gradkv(b, h, t, d):
                    ref = uw_ref(b, h, d)
                    Un = [let(f"U{n}", ref["U"](n)) for n in range(t1)]
                    Wn = [let(f"W{n}", ref["W"](n)) for n in range(t1)]
                    grad_key_row(arg, order, b, t, h, d, M[b, h, d], Un, Wn)

                _time_block(sig, "gradkv", [k, v], [dk, dv], gradkv)
    return _finish(ib)


def build_func(kernel: str, order: int, dtype: str, causal: bool, H: int, D: int,
               static: dict | None = None, align: int = TIME_ALIGN) -> tirx.PrimFunc:
    """The unscheduled PrimFunc of one kernel (``step`` is the causal forward, run at ``T = 1``).

    ``static``: ``{"B": int, "T": int, "r": float}`` fixes the batch, the length and the scale (a tuning
    workload: static shapes and tensor-only arguments, as MetaSchedule's runners need). ``align``: the main
    time block's length is a multiple of it (``schedule.time_align`` of the config to apply).
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if order < 0 or order % 2:
        raise ValueError(f"order must be a non-negative even int, got {order}")
    if align < 1 or align % TIME_ALIGN:
        raise ValueError(f"align must be a positive multiple of {TIME_ALIGN}, got {align}")
    if kernel == "backward":
        return backward(order, dtype, causal, H, D, static, align)
    return forward(order, dtype, causal if kernel == "forward" else True, H, D, static, step=kernel == "step",
                   align=align)
