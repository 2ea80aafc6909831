"""Scalar EA-t math emitted as TIR through TVM's IR builder (shared by the CPU and CUDA kernels).

Every helper runs inside an ``IRBuilder`` frame and emits ``Bind`` statements (TVMScript's ``T.let``):
scalars bound that way are widened correctly when the enclosing loop is vectorised, whereas a
one-element buffer would silently share one value across all lanes (docs/findings.md).

Features are the symmetric ones of ``ea_ops.features``: ``f_n(x) = (sqrt2 x)^n / sqrt(n!)``, built by
the recurrence ``f_n = f_{n-1} * g_n(x)`` with ``g_n(x) = x sqrt(2/n)``, so no power or factorial is formed.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Callable, Sequence

from tvm import tirx
from tvm.script.ir_builder import tirx as T

F32 = "float32"
# exp(z) is flushed to 0 below this (the exponent-field trick needs k >= -125, i.e. z >= -86.6).
EXP_FLOOR = -86.0
# 1.5 * 2^23: x + ROUND_SHIFT rounds x (|x| < 2^22) to an integer held in the low mantissa bits.
ROUND_SHIFT = 12582912.0


def storage_dtype(dtype: str) -> str:
    """The buffer dtype of a tensor dtype: bfloat16 travels as its int16 bits.

    TVM 0.27's bf16 legalisation miscompiles a float32 ``Bind`` whose value reads a bfloat16 buffer
    (wrong values, no error), so the kernels convert bfloat16 bits themselves (``to_f32``/``from_f32``).
    """
    return "int16" if dtype == "bfloat16" else dtype


def to_f32(val, storage: str):
    """A loaded element as float32 (``storage`` is the buffer dtype)."""
    if storage == F32:
        return val
    if storage == "int16":  # bfloat16 bits are the high half of a float32
        return T.reinterpret(F32, T.shift_left(T.Cast("int32", val), 16))
    return T.Cast(F32, val)


def from_f32(val, storage: str):
    """A float32 value rounded to the buffer dtype (bfloat16: round to nearest even, NaN kept)."""
    if storage == F32:
        return val
    if storage == "int16":
        bits = T.reinterpret("int32", val)
        rounded = bits + tirx.const(0x7FFF, "int32") + T.bitwise_and(T.shift_right(bits, 16), 1)
        out = T.Cast("int16", T.shift_right(rounded, 16))
        return select(val != val, tirx.const(0x7FC0, "int16"), out)
    return T.Cast(storage, val)


def const(value: float) -> tirx.PrimExpr:
    return tirx.const(value, F32)


def let(name: str, value) -> tirx.Var:
    """Bind ``value`` to a fresh float32 variable (``x: T.let[T.float32] = value``)."""
    return T.Bind(value, var=tirx.Var(name, F32))


def select(cond, a, b):
    return tirx.Select(cond, a, b)


_FUSED = contextvars.ContextVar("ea_ops_tvm_fused_fma", default=True)


def fma(a, b, c):
    """``a * b + c`` as one fused operation (``llvm.fmuladd``) on LLVM targets.

    Written as ``a * b + c`` LLVM contracts the product it likes best: for ``S_n a + p_{n-1} g_n`` it
    fused the chain product and left ``S_n a`` as a separate multiply, one extra op per state term.
    TVM's CUDA code generator has no rule for ``tirx.fma``; CUDA kernels build under ``unfused()``
    and NVCC contracts ``a * b + c`` itself.
    """
    return T.fma(a, b, c) if _FUSED.get() else a * b + c


@contextlib.contextmanager
def unfused():
    """Emit ``fma`` as ``a * b + c`` inside this block (CUDA kernels)."""
    token = _FUSED.set(False)
    try:
        yield
    finally:
        _FUSED.reset(token)


# exp(r) on |r| <= ln2/2: a degree-6 minimax polynomial for the relative error (Remez; 1.9e-9 in exact
# arithmetic, 9.6e-8 evaluated by Horner in float32), low order first.
EXP_POLY = (1.0000000006, 1.0000000363, 0.4999999208, 0.1666642017, 0.041668225569, 0.0083748158043,
            0.0013836845999)


def exp_neg(z, name: str = "e", floor: bool = False) -> tirx.Var:
    """``exp(z)`` for ``z <= 0`` as a vectorisable polynomial; ``-inf`` and ``z < -86`` give exactly 0.

    ``T.exp`` lowers to scalar ``expf`` calls that block vectorisation. Range reduction ``z = k ln2 + r``
    (|r| <= ln2/2, Cody-Waite split of ln2), the degree-6 polynomial ``EXP_POLY`` by Horner (six fused
    multiply-adds), and ``2^k`` added to the exponent field as an integer. ``k`` comes from one fused add of a
    shifter (``ROUND_SHIFT``: the sum's low mantissa bits hold ``k``, rounded to nearest), whose bits shifted
    left by 23 are ``k << 23`` (mod 2^32): no float-to-int conversion, no clamp. Below ``EXP_FLOOR`` (and for
    ``-inf``, where the reduction gives NaN) the final select gives 0; 12 vector instructions and the select's 2.
    ``floor``: instead clamp ``z`` to ``EXP_FLOOR`` first (one ``max``), so ``exp(z) >= exp(-86)`` (4.4e-38, a
    normal float) for every ``z``; a NaN ``z`` stays NaN (the compare is false for it). For weights whose
    largest is 1, where 4.4e-38 in place of 0 is below any rounding.
    """
    z = let(name + "_arg", z)
    if floor:
        z = let(name + "_cl", select(z < const(EXP_FLOOR), const(EXP_FLOOR), z))
    t = let(name + "_t", fma(z, const(1.4426950408889634), const(ROUND_SHIFT)))
    k = let(name + "_k", t - const(ROUND_SHIFT))
    r = let(name + "_r", fma(k, const(2.12194440e-4), fma(k, const(-0.693359375), z)))
    p = const(EXP_POLY[-1])
    for c in EXP_POLY[-2::-1]:
        p = fma(p, r, const(c))
    p = let(name + "_p", p)
    bits = T.reinterpret("int32", p) + T.shift_left(T.reinterpret("int32", t), 23)
    if floor:
        return let(name, T.reinterpret(F32, bits))
    return let(name, select(z < const(EXP_FLOOR), const(0.0), T.reinterpret(F32, bits)))


def steps(x, order: int, name: str) -> list:
    """``[None, g_1, ..., g_t]`` with ``g_n = x sqrt(2/n)`` (``f_n = f_{n-1} g_n``)."""
    return [None] + [let(f"{name}{n}", x * const(math.sqrt(2.0 / n))) for n in range(1, order + 1)]


def chain(start, g: Sequence, name: str) -> list:
    """``[start, start g_1, start g_1 g_2, ...]``: ``start * f_n(x)`` for ``n = 0..t``."""
    out = [start]
    for n in range(1, len(g)):
        out.append(let(f"{name}{n}", out[-1] * g[n]))
    return out


def horner(g: Sequence, coef: Sequence):
    """``sum_n f_n(x) coef_n`` by the nested form ``c_0 + g_1 (c_1 + g_2 (c_2 + ...))``."""
    acc = coef[-1]
    for n in range(len(coef) - 1, 0, -1):
        acc = fma(g[n], acc, coef[n - 1])
    return acc


def horner_deriv(g: Sequence, coef: Sequence):
    """``sum_n f_n'(x) coef_n`` with ``f_n' = sqrt(2n) f_{n-1}``: a Horner form over ``n - 1``."""
    order = len(coef) - 1
    if order == 0:
        return const(0.0)
    shifted = [coef[n + 1] * const(math.sqrt(2.0 * (n + 1))) for n in range(order)]
    return horner(g[:order], shifted)


class StateRef:
    """Where one channel's running state lives: loads and stores of ``S_n, Z_n`` (n = 0..t) and ``m``."""

    def __init__(self, load: Callable, store: Callable, load_m: Callable, store_m: Callable):
        self.load, self.store, self.load_m, self.store_m = load, store, load_m, store_m


def scan_step(st: StateRef, y, v, order: int):
    """Absorb key ``y`` and value ``v`` into the state (stabilised; see ``ea_ops.state``).

    ``m' = min(m, y^2)``; exactly one of ``a = exp(m' - m)``, ``b = exp(m' - y^2)`` differs from 1, so one
    exponential ``e = exp(-|m - y^2|)`` serves both (``m = +inf`` gives ``e = 0``: the empty state is
    dropped). Returns the new ``S_n, Z_n`` and ``m`` (bound scalars) after storing them.
    """
    m = let("m", st.load_m())
    y2 = let("y2", y * y)
    e = exp_neg(const(0.0) - T.abs(m - y2))
    grow = y2 < m
    a = let("a", select(grow, e, const(1.0)))
    b = let("b", select(grow, const(1.0), e))
    m_new = let("m_new", T.min(m, y2))
    st.store_m(m_new)
    gy = steps(y, order, "gy")
    p = chain(b, gy, "p")  # b f_n(y)
    pv = chain(let("bv", b * v), gy, "pv")  # b f_n(y) v
    s_new, z_new = [], []
    for n in range(order + 1):
        s_n = let(f"S{n}", fma(st.load("S", n), a, pv[n]))
        z_n = let(f"Z{n}", fma(st.load("Z", n), a, p[n]))
        st.store("S", n, s_n)
        st.store("Z", n, z_n)
        s_new.append(s_n)
        z_new.append(z_n)
    return s_new, z_new, m_new


def load_state(st: StateRef, order: int):
    return ([let(f"S{n}", st.load("S", n)) for n in range(order + 1)],
            [let(f"Z{n}", st.load("Z", n)) for n in range(order + 1)])


def output(x, S: Sequence, Z: Sequence, order: int):
    """``(o, den, gx)``: ``o = sum f_n(x) S_n / sum f_n(x) Z_n``, its denominator and the steps of ``x``."""
    gx = steps(x, order, "gx")
    num = let("num", horner(gx, S))
    den = let("den", horner(gx, Z))
    return let("o", num / den), den, gx


def grad_x(gx, S, Z, o, c):
    """``dL/dx = c (N' - o D')`` with ``c = g / den`` (docs/math.md section 5 gradients; the exp(m) scaling cancels)."""
    return c * (horner_deriv(gx, S) - o * horner_deriv(gx, Z))


def grad_key(y, v, e, U: Sequence, W: Sequence, order: int):
    """``(dL/dy, dL/dv)`` of one key from the suffix sums ``U, W`` (both scaled like the key's ``e``).

    ``dv = e sum f_n(y) U_n``; ``dy = e sum (f_n'(y) - 2 y f_n(y)) (v U_n - W_n)``.
    """
    gy = steps(y, order, "gk")
    P = [let(f"P{n}", v * U[n] - W[n]) for n in range(order + 1)]
    dv = e * horner(gy, U)
    dy = e * (horner_deriv(gy, P) - const(2.0) * y * horner(gy, P))
    return dy, dv
