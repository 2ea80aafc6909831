"""Triton kernels of EA-t (docs/math.md), in the state convention of ``ea_ops.state.EAState``.

Data layout. ``q, k, v, o`` (and gradients) are contiguous ``[B, T, H, D]`` seen as rows ``[R, HD]``
(``R = B*T`` positions, ``HD = H*D`` channels): element ``(row, c)`` sits at ``row*HD + c``. A *work item*
is a range of rows ``bounds[2*i], bounds[2*i+1]`` (a whole sequence, or a chunk of one). State buffers
``[items, H, T1, D]`` (``T1 = order+1``) hold item ``i``'s sums like ``EAState.S``; offsets ``[items, H, D]``.

Lanes. One program handles ``BLOCK_C`` channels of one work item; the Taylor index ``n`` is the first dim of
``[T1P, BLOCK_C]`` tiles (``T1P`` = next power of two >= ``T1``, the padded rows held at 0). The launch code
uses ``BLOCK_C = 32 * num_warps``: one channel per thread, so Triton gives the tiles a layout with all of
``n`` inside one thread (sums over ``n`` and the feature products stay in registers) that equals the
layout of the per-row loads, and no layout conversion goes through shared memory (checked on the
compiled code by the ahead-of-time test). Rows are taken ``ROWS`` at a time: their loads are issued
together as ``[ROWS, BLOCK_C]`` tiles (rows again inside one thread), then scanned one by one from registers,
so each thread has several rows in flight instead of one.

Basis. Inside the kernels the sums are held in the monomial basis, ``S_n / c_n = sum w y^n v`` with
``c_n = sqrt(2^n / n!)`` (``f_n(y) = c_n y^n``): keys enter as powers of ``y`` with no coefficient, and queries
evaluate ``sum_n a_n x^n M_n`` (``a_n = c_n^2 = 2^n / n!``) and its derivative by Horner with ``a_n`` folded
into the steps (``2x / k``). States in and out (``EAState``, chunk states) are in the feature basis: divided by
``c_n`` on load, multiplied on store. The backward's reverse sums (``u/w``) are internal and stay monomial.
This is the constant folding of the CPU's block-stabilised forward (issue 14 item 3); SASS instructions per
element before and after are in docs/triton_builds.md.

Stabilisation: every ``exp`` argument is ``<= 0`` (``m`` is the running minimum of ``y^2``; suffix sums of
the backward are referenced to the position's own ``m``), as in ``ea_ops.backends.torch``. The forward scans
full blocks of ``ROWS`` rows against the block's minimum (one rescale a block) and rescans an item exactly
when a block's minimum fell too far for that (``_fwd_rows_block``, ``DROP_MAX``); the backward rescales per row.

Argument naming (the ahead-of-time compiler builds signatures from it): ``*_ptr`` of ``q k v o g dq dk
dv`` are in the input dtype, ``bounds_ptr seq_chunks_ptr item_seq_ptr`` are int32, other pointers float32;
``r`` is float32, other scalars int32; upper-case names are ``tl.constexpr``.
"""

from __future__ import annotations

import triton
import triton.language as tl

# The int arguments ``HD`` and ``D`` are not specialized on their values. By default the JIT marks an int
# divisible by 16 with ``tt.divisibility = 16`` (every realistic ``H*D``) and turns a 1 into a constant; with
# the attribute Triton 3.9 picks another layout for the row tiles (sm_90, bf16, order 6, 4 warps: fwd_scan
# 48 -> 114 registers, 0 -> 1 KiB shared memory, 0 -> 97 barriers; docs/triton_builds.md). Without it the JIT
# compiles one build per pointer alignment, the one the ahead-of-time test checks (schedules/triton/aot.py).
INT_ARGS = ("HD", "D")
_kernel = triton.jit(do_not_specialize=INT_ARGS)


# ------------------------------------------------------------------------------------------ helpers
@triton.jit
def _feature_coefs(T1P: tl.constexpr, ORDER: tl.constexpr):
    """``(a, b)`` with ``f = cumprod(a + b*x)`` over ``n``: ``a = [1, 0, ...]``, ``b_n = sqrt(2/n)``."""
    n = tl.arange(0, T1P)
    nf = tl.maximum(n.to(tl.float32), 1.0)
    a = tl.where(n == 0, 1.0, 0.0)
    b = tl.where((n >= 1) & (n <= ORDER), tl.sqrt(2.0 / nf), 0.0)
    return a, b


@triton.jit
def _feats(x, a, b):
    """``[C] -> [T1P, C]``: the features ``f_n(x)`` (``0`` for padded ``n``)."""
    return tl.cumprod(a[:, None] + b[:, None] * x[None, :], axis=0)


LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _exp(x):
    """``exp(x)`` as ``ex2.approx.ftz`` of ``x log2 e`` (what ``tl.exp2`` emits): ``tl.exp`` emits the non-flushing
    ``ex2.approx.f32``, which ptxas wraps in 3 more instructions for results under 2^-126. The kernels take
    ``exp`` of arguments <= 0 only, where such a result is a weight next to the largest one, 1, and flushing it
    to 0 changes no float32 sum."""
    return tl.exp2(x * LOG2E)


@triton.jit
def _div_pos(a, r):
    """``a / b`` for ``b > 0`` given ``r = rsqrt(b)`` (``rsqrt.approx.ftz``: one ``MUFU.RSQ``, shared by the
    divisions by one ``b``), as ``(a r) r``, about 4 ulp: ``div.full.f32`` costs a ``MUFU.RCP`` and 7 more
    instructions of range handling per division. ``a r`` first, so ``r^2`` never goes subnormal for a large
    ``b``. The denominators here are the stabilised sums ``sum_j w_j P_t(2 x y_j)``: every weight ``<= 1`` and one
    of them 1 (at least ``exp(-DROP_MAX)`` in the block form), and ``P_t > 0`` for even ``t``, so ``b`` is far
    from 0 and from float32's limits unless an input is."""
    return (a * r) * r


@triton.jit
def _rebase(m_to, m_from):
    """``exp(m_to - m_from)``, and 1 where both are equal (also ``inf == inf``, never ``exp(nan)``)."""
    return tl.where(m_to == m_from, 1.0, _exp(m_to - m_from))


@triton.jit
def _row(tile, ridx, i: tl.constexpr):
    """Row ``i`` (a compile-time index) of a ``[ROWS, C]`` tile held inside each thread: the selects fold
    to a register pick (``x + -0.0`` is ``x``)."""
    return tl.sum(tl.where(ridx[:, None] == i, tile, -0.0), axis=0)


@triton.jit
def _put(tile, ridx, i: tl.constexpr, x):
    """``tile`` with row ``i`` replaced by ``x``."""
    return tl.where(ridx[:, None] == i, x[None, :], tile)


@triton.jit
def _basis(T1P: tl.constexpr, ORDER: tl.constexpr, BLOCK_C: tl.constexpr):
    """``[T1P, BLOCK_C]``: ``c_n = sqrt(2^n / n!)``, the features' coefficients (``f_n(y) = c_n y^n``), 1 in the
    padded rows (so dividing by it is safe). A 2-D tile: a scan over a 1-D one crosses threads (shared memory)."""
    a, b = _feature_coefs(T1P, ORDER)
    n = tl.arange(0, T1P)
    return tl.where((n <= ORDER)[:, None], _feats(tl.full([BLOCK_C], 1.0, tl.float32), a, b), 1.0)


@triton.jit
def _powers(y, T1P: tl.constexpr, ORDER: tl.constexpr):
    """``[C] -> [T1P, C]``: ``y^n`` for ``n <= ORDER``, 0 in the padded rows."""
    n = tl.arange(0, T1P)
    P = tl.cumprod(tl.where(n[:, None] == 0, 1.0, y[None, :]), axis=0)
    return tl.where((n <= ORDER)[:, None], P, 0.0)


@triton.jit
def _absorb(M, N, m, y, v, valid, T1P: tl.constexpr, ORDER: tl.constexpr):
    """Key ``y`` and value ``v`` into the stabilised state with running minimum ``m``, held in the monomial basis
    ``[T1P, BLOCK_C]``: ``M_n = S_n / c_n = sum w y^n v``, ``N_n = Z_n / c_n`` (the features' constant
    coefficients are folded into the query side, ``_ratio_horner``). A row past the item (``valid`` False)
    changes nothing (weight 0, ``m`` kept). Returns ``M, N, m``."""
    y2 = y * y
    mn = tl.where(valid, tl.minimum(m, y2), m)
    # One exp serves both factors: with d = m - y^2, a new minimum (d > 0) rescales the state by exp(-d) and
    # weighs the key 1; otherwise the state is kept and the key weighs exp(d). Equal to exp(mn - m) and
    # exp(mn - y^2) everywhere, inf and NaN included (m = y^2 = inf: d is NaN, the weight NaN, as exp(inf - inf)).
    d = m - y2
    e = _exp(-tl.abs(d))
    drop = d > 0.0
    keep = tl.where(drop & valid, e, 1.0)
    # a select, not a multiply by the mask (inf * 0 = NaN past the item once m > 88.7)
    w = tl.where(valid, tl.where(drop, 1.0, e), 0.0)
    P = _powers(y, T1P, ORDER)
    M = keep[None, :] * M + (w * v)[None, :] * P
    N = keep[None, :] * N + w[None, :] * P
    return M, N, mn


@triton.jit
def _ratio_horner(M, N, x, ORDER: tl.constexpr):
    """``o = sum_n a_n x^n M_n / sum_n a_n x^n N_n`` with ``a_n = 2^n/n!`` folded into Horner's steps
    (``a_n x^n = prod_{k<=n} 2x/k``): one multiply by a constant and two FMAs per order. The division is
    ``_div_pos`` (the denominator is at least ``min P_t`` times the largest weight)."""
    n = tl.arange(0, M.shape[0])
    num = _row(M, n, ORDER)
    den = _row(N, n, ORDER)
    for j in tl.static_range(ORDER):  # n = ORDER - 1 - j
        t = x * (2.0 / (ORDER - j))
        num = _row(M, n, ORDER - 1 - j) + t * num
        den = _row(N, n, ORDER - 1 - j) + t * den
    return _div_pos(num, tl.math.rsqrt(den))


@triton.jit
def _horner2(M, N, x, ORDER: tl.constexpr):
    """``(p_M, p_N, h_M, h_N)``: ``p = sum_n a_n x^n M_n`` and ``h = sum_{n>=1} a_{n-1} x^{n-1} M_n`` (so that
    ``dp/dx = 2h``, as ``n a_n = 2 a_{n-1}``), for ``M`` and ``N``, by Horner with ``a_n`` folded in: with
    ``t_k = 2x/k``, ``p = M_0 + t_1 (M_1 + t_2 (...))`` and ``h = M_1 + t_1 (M_2 + t_2 (...))``."""
    n = tl.arange(0, M.shape[0])
    pm = _row(M, n, ORDER)
    pn = _row(N, n, ORDER)
    if ORDER == 0:
        hm = tl.zeros_like(x)
        hn = tl.zeros_like(x)
    else:
        hm = pm
        hn = pn
    for j in tl.static_range(ORDER):  # k = ORDER - j
        t = x * (2.0 / (ORDER - j))
        pm = _row(M, n, ORDER - 1 - j) + t * pm
        pn = _row(N, n, ORDER - 1 - j) + t * pn
        if j > 0:
            hm = _row(M, n, ORDER - j) + t * hm
            hn = _row(N, n, ORDER - j) + t * hn
    return pm, pn, hm, hn


@triton.jit
def _query_grad(x, g, M, N, ORDER: tl.constexpr):
    """For query ``x`` with upstream gradient ``g`` against the monomial-basis state ``M, N``: ``(dx, c, o)``
    with ``c = g / den`` and ``dx = c (N' - o Dn')`` (docs/math.md section 5, before the ``r`` factor)."""
    pm, pn, hm, hn = _horner2(M, N, x, ORDER)
    # One div.full.f32 (2 ulp) serves both: not _div_pos, whose 4 ulp dx = c (N' - o D') would magnify by its
    # cancellation (at |y| ~ 11 the float32 reference's dq is already 1e-2 from float64)
    inv = tl.fdiv(1.0, pn)
    o = pm * inv
    c = g * inv
    return 2.0 * c * (hm - o * hn), c, o


# The block form's limit on the fall of the running minimum inside one block (natural-log units): the rows
# before the fall see their sums scaled by at least exp(-DROP_MAX) = 1.1e-7, which costs nothing above
# float32's normal range; beyond it the program rescans exactly (``ea_fwd_scan``).
DROP_MAX = tl.constexpr(16.0)


@triton.jit
def _fwd_rows_exact(q_ptr, k_ptr, v_ptr, o_ptr, S, Z, m, blk, end, c, cm, r, HD,
                    ORDER: tl.constexpr, T1P: tl.constexpr, ROWS: tl.constexpr, WRITE_O: tl.constexpr):
    """Rows ``blk .. min(blk + ROWS, end)`` into the state, each rescaling it to its own running minimum
    (``_absorb``), with their outputs (``WRITE_O``). Returns ``S, Z, m``."""
    ridx = tl.arange(0, ROWS)
    # ROWS rows' loads are issued together: memory latency overlaps the sequential scan
    toff = tl.cast(blk, tl.int64) * HD + ridx[:, None] * HD + c[None, :]
    tmask = ((blk + ridx) < end)[:, None] & cm[None, :]
    Y = tl.load(k_ptr + toff, mask=tmask, other=0.0).to(tl.float32) * r
    V = tl.load(v_ptr + toff, mask=tmask, other=0.0).to(tl.float32)
    if WRITE_O:
        X = tl.load(q_ptr + toff, mask=tmask, other=0.0).to(tl.float32) * r
        O = tl.zeros([ROWS, c.shape[0]], tl.float32)
    for i in tl.static_range(ROWS):
        S, Z, m = _absorb(S, Z, m, _row(Y, ridx, i), _row(V, ridx, i), blk + i < end, T1P, ORDER)
        if WRITE_O:
            O = _put(O, ridx, i, _ratio_horner(S, Z, _row(X, ridx, i), ORDER))
    if WRITE_O:
        tl.store(o_ptr + toff, O.to(o_ptr.dtype.element_ty), mask=tmask)
    return S, Z, m


@triton.jit
def _fwd_rows_block(q_ptr, k_ptr, v_ptr, o_ptr, S, Z, m, worst, blk, c, cm, r, HD,
                    ORDER: tl.constexpr, T1P: tl.constexpr, ROWS: tl.constexpr, WRITE_O: tl.constexpr):
    """The ROWS rows from ``blk`` (all inside the item) against one reference, the block's minimum ``mb``:
    the state is rescaled once, to ``mb``, and every key weighs ``exp(mb - y^2) <= 1`` (the CPU's block
    stabilisation). Row ``i``'s sums are then its exact ones times ``exp(mb - m_i)``, which cancels in
    its ratio; ``worst`` keeps the largest ``m_0 - mb``, the smallest of those factors. Returns
    ``S, Z, mb, worst``."""
    ridx = tl.arange(0, ROWS)
    toff = tl.cast(blk, tl.int64) * HD + ridx[:, None] * HD + c[None, :]
    tmask = (ridx >= 0)[:, None] & cm[None, :]
    Y = tl.load(k_ptr + toff, mask=tmask, other=0.0).to(tl.float32) * r
    V = tl.load(v_ptr + toff, mask=tmask, other=0.0).to(tl.float32)
    Y2 = Y * Y
    m0 = tl.minimum(m, _row(Y2, ridx, 0))
    mb = m0
    for i in tl.static_range(1, ROWS):
        mb = tl.minimum(mb, _row(Y2, ridx, i))
    keep = _rebase(mb, m)
    S = keep[None, :] * S
    Z = keep[None, :] * Z
    if WRITE_O:
        worst = tl.maximum(worst, m0 - mb)
        X = tl.load(q_ptr + toff, mask=tmask, other=0.0).to(tl.float32) * r
        O = tl.zeros([ROWS, c.shape[0]], tl.float32)
    mb2 = mb * LOG2E
    for i in tl.static_range(ROWS):
        y = _row(Y, ridx, i)
        w = tl.exp2(tl.fma(_row(Y2, ridx, i), -LOG2E, mb2))  # exp(mb - y^2): one FFMA where a FADD and FMUL were
        P = _powers(y, T1P, ORDER)
        S = S + (w * _row(V, ridx, i))[None, :] * P
        Z = Z + w[None, :] * P
        if WRITE_O:
            O = _put(O, ridx, i, _ratio_horner(S, Z, _row(X, ridx, i), ORDER))
    if WRITE_O:
        tl.store(o_ptr + toff, O.to(o_ptr.dtype.element_ty), mask=tmask)
    return S, Z, mb, worst


@triton.jit
def _item_rows(bounds_ptr, item):
    """Rows ``[start, end)`` of work item ``item``, as int64: the row loops step ``ROWS`` past ``end`` and
    compare ``row + i < end``, which would wrap in int32 from ``2^31 - ROWS`` rows on (the work tables admit
    ``2^31 - 1``)."""
    start = tl.load(bounds_ptr + 2 * item).to(tl.int64)
    end = tl.load(bounds_ptr + 2 * item + 1).to(tl.int64)
    return start, end


@triton.jit
def _state_offsets(item, c, HD, D, T1: tl.constexpr, T1P: tl.constexpr):
    """Offsets ``[T1P, C]`` of ``S[item, h, n, d]`` for channels ``c = h*D + d``, and the row mask."""
    n = tl.arange(0, T1P)
    lane = (c // D) * (T1 * D) + c % D
    off = tl.cast(item, tl.int64) * HD * T1 + n[:, None] * D + lane[None, :]
    return off, n < T1


@triton.jit
def _load_state(s_ptr, z_ptr, m_ptr, item, c, cm, HD, D,
                ORDER: tl.constexpr, T1: tl.constexpr, T1P: tl.constexpr, BLOCK_C: tl.constexpr):
    """State ``item`` for channels ``c`` in the monomial basis (``S / c_n``, ``Z / c_n``, ``m``)."""
    soff, nm = _state_offsets(item, c, HD, D, T1, T1P)
    smask = nm[:, None] & cm[None, :]
    coef = _basis(T1P, ORDER, BLOCK_C)
    S = tl.load(s_ptr + soff, mask=smask, other=0.0) / coef
    Z = tl.load(z_ptr + soff, mask=smask, other=0.0) / coef
    m = tl.load(m_ptr + tl.cast(item, tl.int64) * HD + c, mask=cm, other=float("inf"))
    return S, Z, m


@triton.jit
def _empty_state(T1P: tl.constexpr, BLOCK_C: tl.constexpr):
    """The state of no keys: ``S = Z = 0``, ``m = +inf``."""
    return (tl.zeros([T1P, BLOCK_C], tl.float32), tl.zeros([T1P, BLOCK_C], tl.float32),
            tl.full([BLOCK_C], float("inf"), tl.float32))


# ------------------------------------------------------------------------------- causal forward scan
@_kernel
def ea_fwd_scan(q_ptr, k_ptr, v_ptr, o_ptr, bounds_ptr, s_in_ptr, z_in_ptr, m_in_ptr,
                s_out_ptr, z_out_ptr, m_out_ptr, r, HD, D,
                ORDER: tl.constexpr, T1: tl.constexpr, T1P: tl.constexpr, BLOCK_C: tl.constexpr,
                ROWS: tl.constexpr, LOAD_STATE: tl.constexpr, WRITE_O: tl.constexpr, STORE_STATE: tl.constexpr):
    """Causal scan over the rows of one work item for ``BLOCK_C`` channels.

    Starts from state ``in[item]`` (``LOAD_STATE``) or the empty state; writes ``o`` per row (``WRITE_O``)
    and the state after the item to ``out[item]`` (``STORE_STATE``). Grid ``(items, cdiv(HD, BLOCK_C))``.
    """
    item = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < HD
    start, end = _item_rows(bounds_ptr, item)
    if LOAD_STATE:  # the state is scanned in the monomial basis, S / c_n
        S, Z, m = _load_state(s_in_ptr, z_in_ptr, m_in_ptr, item, c, cm, HD, D, ORDER, T1, T1P, BLOCK_C)
    else:
        S, Z, m = _empty_state(T1P, BLOCK_C)
    # The first ROWS rows and the last partial block take the exact per-row form (``_fwd_rows_exact``); the
    # full blocks between them the block form (``_fwd_rows_block``), which rescales the state once per block.
    # After the first block the running minimum is that of ROWS keys, so a later block can drop it by more
    # than DROP_MAX only while it is still above DROP_MAX (large keys everywhere so far, or a loaded state).
    head_end = tl.minimum(start + ROWS, end)
    full_end = head_end + (end - head_end) // ROWS * ROWS
    S, Z, m = _fwd_rows_exact(q_ptr, k_ptr, v_ptr, o_ptr, S, Z, m, start, end, c, cm, r, HD,
                              ORDER, T1P, ROWS, WRITE_O)
    worst = tl.zeros([BLOCK_C], tl.float32)
    for blk in range(head_end, full_end, ROWS):
        S, Z, m, worst = _fwd_rows_block(q_ptr, k_ptr, v_ptr, o_ptr, S, Z, m, worst, blk, c, cm, r, HD,
                                         ORDER, T1P, ROWS, WRITE_O)
    # The partial last block, exactly; or, after a block whose minimum fell by more than DROP_MAX (its earlier
    # rows' sums scaled by less than exp(-DROP_MAX), all of them 0 past a fall of about 87), the whole item
    # again, exactly. The state the block form carries on is exact either way; only outputs need the rescan.
    # One loop serves both: TritonGPUCoalesce's time grows with the square of the code, and a copy for each
    # made the order-14 build take 7.5 s to compile (0.6 s before the block form).
    lo = full_end
    if WRITE_O:
        if tl.max(worst, axis=0) > DROP_MAX:
            lo = start
            if LOAD_STATE:  # (again, from an index not CSE'd with item: see STORE_STATE below)
                S, Z, m = _load_state(s_in_ptr, z_in_ptr, m_in_ptr, tl.where(start <= end, item, 0), c, cm, HD, D,
                                      ORDER, T1, T1P, BLOCK_C)
            else:
                S, Z, m = _empty_state(T1P, BLOCK_C)
    for blk in range(lo, end, ROWS):
        S, Z, m = _fwd_rows_exact(q_ptr, k_ptr, v_ptr, o_ptr, S, Z, m, blk, end, c, cm, r, HD,
                                  ORDER, T1P, ROWS, WRITE_O)
    if STORE_STATE:
        # offsets and coefficients again, from an index the compiler cannot equate with ``item`` (kept from
        # the start, they held about 30 more registers through the row loops)
        again = tl.where(start <= end, item, 0)
        coef = _basis(T1P, ORDER, BLOCK_C)
        soff, nm = _state_offsets(again, c, HD, D, T1, T1P)
        smask = nm[:, None] & cm[None, :]
        S = S * coef
        Z = Z * coef
        if LOAD_STATE:  # an item without rows hands its state on bit for bit (S / c * c is not S)
            S = tl.where(end <= start, tl.load(s_in_ptr + soff, mask=smask, other=0.0), S)
            Z = tl.where(end <= start, tl.load(z_in_ptr + soff, mask=smask, other=0.0), Z)
        tl.store(s_out_ptr + soff, S, mask=smask)
        tl.store(z_out_ptr + soff, Z, mask=smask)
        tl.store(m_out_ptr + tl.cast(again, tl.int64) * HD + c, m, mask=cm)


@_kernel
def ea_chunk_prefix(seq_chunks_ptr, s_init_ptr, z_init_ptr, m_init_ptr, s_ptr, z_ptr, m_ptr,
                    s_fin_ptr, z_fin_ptr, m_fin_ptr, HD, D,
                    T1: tl.constexpr, T1P: tl.constexpr, BLOCK_C: tl.constexpr,
                    LOAD_INIT: tl.constexpr, WRITE_PREFIX: tl.constexpr, STORE_FINAL: tl.constexpr):
    """Prefix over consecutive chunk states ``seq_chunks[p] .. seq_chunks[p+1]`` (a sequence's, or a group's:
    ``plan``), program ``p`` along axis 0.

    On entry ``s/z/m[ch]`` hold chunk ``ch``'s own sums (from the empty state). Starts from ``init[p]``
    (``LOAD_INIT``) or empty; with ``WRITE_PREFIX`` each ``s/z/m[ch]`` is replaced, in place, by the state
    entering chunk ``ch``; the state after the last chunk goes to ``fin[p]`` (``STORE_FINAL``).
    Grid ``(programs, cdiv(HD, BLOCK_C))``.
    """
    seq = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < HD
    first = tl.load(seq_chunks_ptr + seq)
    last = tl.load(seq_chunks_ptr + seq + 1)
    soff, nm = _state_offsets(seq, c, HD, D, T1, T1P)
    smask = nm[:, None] & cm[None, :]
    moff = tl.cast(seq, tl.int64) * HD + c
    if LOAD_INIT:
        S = tl.load(s_init_ptr + soff, mask=smask, other=0.0)
        Z = tl.load(z_init_ptr + soff, mask=smask, other=0.0)
        m = tl.load(m_init_ptr + moff, mask=cm, other=float("inf"))
    else:
        S, Z, m = _empty_state(T1P, BLOCK_C)
    for ch in range(first, last):
        coff, _ = _state_offsets(ch, c, HD, D, T1, T1P)
        cmoff = tl.cast(ch, tl.int64) * HD + c
        Sc = tl.load(s_ptr + coff, mask=smask, other=0.0)
        Zc = tl.load(z_ptr + coff, mask=smask, other=0.0)
        mc = tl.load(m_ptr + cmoff, mask=cm, other=float("inf"))
        if WRITE_PREFIX:
            tl.store(s_ptr + coff, S, mask=smask)
            tl.store(z_ptr + coff, Z, mask=smask)
            tl.store(m_ptr + cmoff, m, mask=cm)
        mn = tl.minimum(m, mc)
        ka = _rebase(mn, m)
        kb = _rebase(mn, mc)
        S = ka[None, :] * S + kb[None, :] * Sc
        Z = ka[None, :] * Z + kb[None, :] * Zc
        m = mn
    if STORE_FINAL:
        tl.store(s_fin_ptr + soff, S, mask=smask)
        tl.store(z_fin_ptr + soff, Z, mask=smask)
        tl.store(m_fin_ptr + moff, m, mask=cm)


# ------------------------------------------------------------------------------------ causal backward
@_kernel
def ea_bwd_dx_scan(q_ptr, k_ptr, v_ptr, g_ptr, dq_ptr, bounds_ptr, s_in_ptr, z_in_ptr, m_in_ptr,
                   c_ptr, co_ptr, mm_ptr, u_out_ptr, w_out_ptr, mr_out_ptr, r, HD, D,
                   ORDER: tl.constexpr, T1: tl.constexpr, T1P: tl.constexpr, BLOCK_C: tl.constexpr,
                   ROWS: tl.constexpr, STORE_REV: tl.constexpr):
    """Forward re-scan of the backward: ``dq`` per row, and float32 ``c = g/den``, ``c*o``, ``m`` per row.

    Starts from ``in[item]`` (the initial state, or the state entering the chunk). With ``STORE_REV`` it also
    stores the item's own reverse sums, those ``ea_bwd_rev_scan`` hands on (``U = sum_i c_i x_i^n
    exp(m_i - m_first)`` and ``W`` with ``c_i o_i``, referenced to the first row's ``m``, to ``u/w/mr_out[item]``).
    They are summed here, forward, as the terms appear: each factor ``exp(m_i - m_first)`` is at most 1 (``m``
    never grows), so nothing is gained by the reverse order, and a chunked backward saves a pass that re-read
    ``q, c, c*o, m`` (14 of 62 bytes per element in bfloat16; issue 14 item 5). Grid as ``ea_fwd_scan``.
    """
    item = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < HD
    start, end = _item_rows(bounds_ptr, item)
    # the re-scan runs in the monomial basis, as ea_fwd_scan
    S, Z, m = _load_state(s_in_ptr, z_in_ptr, m_in_ptr, item, c, cm, HD, D, ORDER, T1, T1P, BLOCK_C)
    soff, nm = _state_offsets(item, c, HD, D, T1, T1P)
    smask = nm[:, None] & cm[None, :]
    moff = tl.cast(item, tl.int64) * HD + c
    if STORE_REV:
        # the reference: m after the first row (a chunk, the only item this runs on, has at least one row)
        y0 = tl.load(k_ptr + start * HD + c, mask=cm, other=0.0).to(tl.float32) * r
        m_first = tl.minimum(m, y0 * y0)
        U = tl.zeros([T1P, BLOCK_C], tl.float32)
        W = tl.zeros([T1P, BLOCK_C], tl.float32)
    ridx = tl.arange(0, ROWS)
    for blk in range(start, end, ROWS):
        toff = tl.cast(blk, tl.int64) * HD + ridx[:, None] * HD + c[None, :]
        tmask = ((blk + ridx) < end)[:, None] & cm[None, :]
        Y = tl.load(k_ptr + toff, mask=tmask, other=0.0).to(tl.float32) * r
        V = tl.load(v_ptr + toff, mask=tmask, other=0.0).to(tl.float32)
        X = tl.load(q_ptr + toff, mask=tmask, other=0.0).to(tl.float32) * r
        Gr = tl.load(g_ptr + toff, mask=tmask, other=0.0).to(tl.float32)
        DX = tl.zeros([ROWS, BLOCK_C], tl.float32)
        CC = tl.zeros([ROWS, BLOCK_C], tl.float32)
        CO = tl.zeros([ROWS, BLOCK_C], tl.float32)
        MM = tl.zeros([ROWS, BLOCK_C], tl.float32)
        for i in tl.static_range(ROWS):
            valid = blk + i < end
            S, Z, m = _absorb(S, Z, m, _row(Y, ridx, i), _row(V, ridx, i), valid, T1P, ORDER)
            x = _row(X, ridx, i)
            dx, cc, o = _query_grad(x, _row(Gr, ridx, i), S, Z, ORDER)
            DX = _put(DX, ridx, i, dx)
            CC = _put(CC, ridx, i, cc)
            CO = _put(CO, ridx, i, cc * o)
            MM = _put(MM, ridx, i, m)
            if STORE_REV:
                # a select past the item, never a multiply by a mask (0/0 or inf * 0 there)
                e = tl.where(valid, _rebase(m, m_first), 0.0)
                P = _powers(x, T1P, ORDER)
                U += (e * cc)[None, :] * P
                W += (e * cc * o)[None, :] * P
        tl.store(dq_ptr + toff, (DX * r).to(dq_ptr.dtype.element_ty), mask=tmask)
        tl.store(c_ptr + toff, CC, mask=tmask)
        tl.store(co_ptr + toff, CO, mask=tmask)
        tl.store(mm_ptr + toff, MM, mask=tmask)
    if STORE_REV:
        tl.store(u_out_ptr + soff, U, mask=smask)
        tl.store(w_out_ptr + soff, W, mask=smask)
        tl.store(mr_out_ptr + moff, m_first, mask=cm)


@_kernel
def ea_bwd_rev_scan(q_ptr, k_ptr, v_ptr, dk_ptr, dv_ptr, bounds_ptr, c_ptr, co_ptr, mm_ptr,
                    u_in_ptr, w_in_ptr, mr_in_ptr, r, HD, D,
                    ORDER: tl.constexpr, T1: tl.constexpr, T1P: tl.constexpr, BLOCK_C: tl.constexpr,
                    ROWS: tl.constexpr, LOAD_STATE: tl.constexpr):
    """Reverse scan of the backward over one work item, last row first.

    ``U = sum_{i >= j} c_i f(x_i) exp(m_i - m_j)`` and ``W`` (with ``c_i o_i``) are held referenced to the
    current row's ``m_j`` (all factors ``<= 1``: ``m`` is non-increasing in ``i``), in the monomial basis
    (``U_n / c_n = sum c_i x_i^n ...``; the chunk sums ``u/w`` are internal and stay in it); the key side
    evaluates them by Horner (``_horner2``) for ``dk, dv``. Starts from the sums of the rows after the item,
    ``u/w_in[item]`` referenced to ``mr_in[item]`` (``LOAD_STATE``: a chunk, its suffix from
    ``ea_chunk_suffix`` over the sums ``ea_bwd_dx_scan`` stored), or from zero (a whole sequence).
    Grid as ``ea_fwd_scan``.
    """
    item = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < HD
    start, end = _item_rows(bounds_ptr, item)
    soff, nm = _state_offsets(item, c, HD, D, T1, T1P)
    smask = nm[:, None] & cm[None, :]
    moff = tl.cast(item, tl.int64) * HD + c
    if LOAD_STATE:
        U = tl.load(u_in_ptr + soff, mask=smask, other=0.0)
        W = tl.load(w_in_ptr + soff, mask=smask, other=0.0)
        mref = tl.load(mr_in_ptr + moff, mask=cm, other=float("-inf"))
    else:
        U = tl.zeros([T1P, BLOCK_C], tl.float32)
        W = tl.zeros([T1P, BLOCK_C], tl.float32)
        mref = tl.full([BLOCK_C], float("-inf"), tl.float32)
    ridx = tl.arange(0, ROWS)
    for j in range(0, (end - start + ROWS - 1) // ROWS):
        top = end - 1 - j * ROWS  # tile row i is row top - i: blocks and rows in reverse; rows < start are off
        toff = tl.cast(top, tl.int64) * HD - ridx[:, None] * HD + c[None, :]
        tmask = ((top - ridx) >= start)[:, None] & cm[None, :]
        X = tl.load(q_ptr + toff, mask=tmask, other=0.0).to(tl.float32) * r
        CC = tl.load(c_ptr + toff, mask=tmask, other=0.0)
        CO = tl.load(co_ptr + toff, mask=tmask, other=0.0)
        MI = tl.load(mm_ptr + toff, mask=tmask, other=0.0)
        Y = tl.load(k_ptr + toff, mask=tmask, other=0.0).to(tl.float32) * r
        V = tl.load(v_ptr + toff, mask=tmask, other=0.0).to(tl.float32)
        DY = tl.zeros([ROWS, BLOCK_C], tl.float32)
        DV = tl.zeros([ROWS, BLOCK_C], tl.float32)
        for i in tl.static_range(ROWS):
            valid = top - i >= start  # rows before the item change nothing: c = 0, reference kept
            mi = tl.where(valid, _row(MI, ridx, i), mref)
            keep = _rebase(mref, mi)
            P = _powers(_row(X, ridx, i), T1P, ORDER)
            U = keep[None, :] * U + _row(CC, ridx, i)[None, :] * P
            W = keep[None, :] * W + _row(CO, ridx, i)[None, :] * P
            mref = mi
            y = _row(Y, ridx, i)
            v = _row(V, ridx, i)
            e = _exp(mi - y * y)
            pu, pw, hu, hw = _horner2(U, W, y, ORDER)
            DV = _put(DV, ridx, i, e * pu)
            # sum_n f_n'(y) U_n = 2 h_U, and d/dy exp(-y^2) brings -2y p_U
            DY = _put(DY, ridx, i, 2.0 * e * (v * (hu - y * pu) - (hw - y * pw)))
        tl.store(dk_ptr + toff, (DY * r).to(dk_ptr.dtype.element_ty), mask=tmask)
        tl.store(dv_ptr + toff, DV.to(dv_ptr.dtype.element_ty), mask=tmask)


@_kernel
def ea_chunk_suffix(seq_chunks_ptr, u_ptr, w_ptr, mr_ptr, u_init_ptr, w_init_ptr, mr_init_ptr,
                    u_tot_ptr, w_tot_ptr, mr_tot_ptr, HD, D,
                    T1: tl.constexpr, T1P: tl.constexpr, BLOCK_C: tl.constexpr,
                    LOAD_INIT: tl.constexpr, WRITE_SUFFIX: tl.constexpr, STORE_TOTAL: tl.constexpr):
    """Suffix over consecutive chunk sums ``seq_chunks[p] .. seq_chunks[p+1]`` (a sequence's, or a group's),
    last chunk first, program ``p`` along axis 0.

    On entry ``u/w[ch]`` hold chunk ``ch``'s own reverse sums referenced to ``mr[ch]`` (its first row's ``m``).
    Starts from ``init[p]``, the sums of the rows after the last chunk (``LOAD_INIT``), or from none (``-inf``
    and zero sums). With ``WRITE_SUFFIX`` each ``u/w/mr[ch]`` is replaced, in place, by the sums of all rows
    after chunk ``ch`` and their reference; the sums of all the chunks and the rows after them, referenced to
    the first chunk's ``mr``, go to ``tot[p]`` (``STORE_TOTAL``). Grid ``(programs, cdiv(HD, BLOCK_C))``.
    """
    seq = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < HD
    first = tl.load(seq_chunks_ptr + seq)
    last = tl.load(seq_chunks_ptr + seq + 1)
    soff, nm = _state_offsets(seq, c, HD, D, T1, T1P)
    smask = nm[:, None] & cm[None, :]
    moff = tl.cast(seq, tl.int64) * HD + c
    if LOAD_INIT:
        U = tl.load(u_init_ptr + soff, mask=smask, other=0.0)
        W = tl.load(w_init_ptr + soff, mask=smask, other=0.0)
        mref = tl.load(mr_init_ptr + moff, mask=cm, other=float("-inf"))
    else:
        U = tl.zeros([T1P, BLOCK_C], tl.float32)
        W = tl.zeros([T1P, BLOCK_C], tl.float32)
        mref = tl.full([BLOCK_C], float("-inf"), tl.float32)
    for i in range(first, last):
        ch = last - 1 - (i - first)
        coff, _ = _state_offsets(ch, c, HD, D, T1, T1P)
        cmoff = tl.cast(ch, tl.int64) * HD + c
        Uc = tl.load(u_ptr + coff, mask=smask, other=0.0)
        Wc = tl.load(w_ptr + coff, mask=smask, other=0.0)
        mc = tl.load(mr_ptr + cmoff, mask=cm, other=float("-inf"))
        if WRITE_SUFFIX:
            tl.store(u_ptr + coff, U, mask=smask)
            tl.store(w_ptr + coff, W, mask=smask)
            tl.store(mr_ptr + cmoff, mref, mask=cm)
        keep = _rebase(mref, mc)
        U = keep[None, :] * U + Uc
        W = keep[None, :] * W + Wc
        mref = mc
    if STORE_TOTAL:
        tl.store(u_tot_ptr + soff, U, mask=smask)
        tl.store(w_tot_ptr + soff, W, mask=smask)
        tl.store(mr_tot_ptr + moff, mref, mask=cm)


# ----------------------------------------------------------------------------------------- non-causal
@_kernel
def ea_nc_out(q_ptr, o_ptr, bounds_ptr, item_seq_ptr, s_ptr, z_ptr, r, HD, D,
              ORDER: tl.constexpr, T1: tl.constexpr, T1P: tl.constexpr, BLOCK_C: tl.constexpr,
              ROWS: tl.constexpr):
    """Non-causal output of one work item from its sequence's global sums. Grid as ``ea_fwd_scan``."""
    item = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < HD
    start, end = _item_rows(bounds_ptr, item)
    seq = tl.load(item_seq_ptr + item)
    coef = _basis(T1P, ORDER, BLOCK_C)  # outputs by Horner in the monomial basis, as ea_fwd_scan
    soff, nm = _state_offsets(seq, c, HD, D, T1, T1P)
    smask = nm[:, None] & cm[None, :]
    S = tl.load(s_ptr + soff, mask=smask, other=0.0) / coef
    Z = tl.load(z_ptr + soff, mask=smask, other=0.0) / coef
    ridx = tl.arange(0, ROWS)
    for blk in range(start, end, ROWS):
        toff = tl.cast(blk, tl.int64) * HD + ridx[:, None] * HD + c[None, :]
        tmask = ((blk + ridx) < end)[:, None] & cm[None, :]
        X = tl.load(q_ptr + toff, mask=tmask, other=0.0).to(tl.float32) * r
        O = tl.zeros([ROWS, BLOCK_C], tl.float32)
        for i in tl.static_range(ROWS):
            O = _put(O, ridx, i, _ratio_horner(S, Z, _row(X, ridx, i), ORDER))
        tl.store(o_ptr + toff, O.to(o_ptr.dtype.element_ty), mask=tmask)


@_kernel
def ea_nc_bwd_dx(q_ptr, g_ptr, dq_ptr, bounds_ptr, item_seq_ptr, s_ptr, z_ptr, u_part_ptr, w_part_ptr,
                 r, HD, D, ORDER: tl.constexpr, T1: tl.constexpr, T1P: tl.constexpr, BLOCK_C: tl.constexpr,
                 ROWS: tl.constexpr):
    """Non-causal backward, query side: ``dq`` per row and the item's partial ``U = sum c f(x)``, ``W`` (in the
    monomial basis, ``U_n / c_n``, read only by ``ea_nc_bwd_dkdv``)."""
    item = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < HD
    start, end = _item_rows(bounds_ptr, item)
    seq = tl.load(item_seq_ptr + item)
    coef = _basis(T1P, ORDER, BLOCK_C)
    soff, nm = _state_offsets(seq, c, HD, D, T1, T1P)
    smask = nm[:, None] & cm[None, :]
    S = tl.load(s_ptr + soff, mask=smask, other=0.0) / coef
    Z = tl.load(z_ptr + soff, mask=smask, other=0.0) / coef
    U = tl.zeros([T1P, BLOCK_C], tl.float32)
    W = tl.zeros([T1P, BLOCK_C], tl.float32)
    ridx = tl.arange(0, ROWS)
    for blk in range(start, end, ROWS):
        toff = tl.cast(blk, tl.int64) * HD + ridx[:, None] * HD + c[None, :]
        tmask = ((blk + ridx) < end)[:, None] & cm[None, :]
        X = tl.load(q_ptr + toff, mask=tmask, other=0.0).to(tl.float32) * r
        Gr = tl.load(g_ptr + toff, mask=tmask, other=0.0).to(tl.float32)  # 0 past the item: no U, W
        DX = tl.zeros([ROWS, BLOCK_C], tl.float32)
        for i in tl.static_range(ROWS):
            x = _row(X, ridx, i)
            dx, cc, o = _query_grad(x, _row(Gr, ridx, i), S, Z, ORDER)
            DX = _put(DX, ridx, i, dx)
            P = _powers(x, T1P, ORDER)
            U += cc[None, :] * P
            W += (cc * o)[None, :] * P
        tl.store(dq_ptr + toff, (DX * r).to(dq_ptr.dtype.element_ty), mask=tmask)
    poff, _ = _state_offsets(item, c, HD, D, T1, T1P)
    tl.store(u_part_ptr + poff, U, mask=smask)
    tl.store(w_part_ptr + poff, W, mask=smask)


@_kernel
def ea_nc_bwd_dkdv(k_ptr, v_ptr, dk_ptr, dv_ptr, bounds_ptr, item_seq_ptr, u_ptr, w_ptr, m_ptr, r, HD, D,
                   ORDER: tl.constexpr, T1: tl.constexpr, T1P: tl.constexpr, BLOCK_C: tl.constexpr,
                   ROWS: tl.constexpr):
    """Non-causal backward, key side: ``dk, dv`` per row from the sequence's ``U, W`` (monomial basis) and
    ``m``, by Horner as ``ea_bwd_rev_scan``."""
    item = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = c < HD
    start, end = _item_rows(bounds_ptr, item)
    seq = tl.load(item_seq_ptr + item)
    soff, nm = _state_offsets(seq, c, HD, D, T1, T1P)
    smask = nm[:, None] & cm[None, :]
    U = tl.load(u_ptr + soff, mask=smask, other=0.0)
    W = tl.load(w_ptr + soff, mask=smask, other=0.0)
    m = tl.load(m_ptr + tl.cast(seq, tl.int64) * HD + c, mask=cm, other=0.0)
    ridx = tl.arange(0, ROWS)
    for blk in range(start, end, ROWS):
        toff = tl.cast(blk, tl.int64) * HD + ridx[:, None] * HD + c[None, :]
        tmask = ((blk + ridx) < end)[:, None] & cm[None, :]
        Y = tl.load(k_ptr + toff, mask=tmask, other=0.0).to(tl.float32) * r
        V = tl.load(v_ptr + toff, mask=tmask, other=0.0).to(tl.float32)
        DY = tl.zeros([ROWS, BLOCK_C], tl.float32)
        DV = tl.zeros([ROWS, BLOCK_C], tl.float32)
        for i in tl.static_range(ROWS):
            y = _row(Y, ridx, i)
            v = _row(V, ridx, i)
            e = _exp(m - y * y)
            pu, pw, hu, hw = _horner2(U, W, y, ORDER)
            DV = _put(DV, ridx, i, e * pu)
            DY = _put(DY, ridx, i, 2.0 * e * (v * (hu - y * pu) - (hw - y * pw)))
        tl.store(dk_ptr + toff, (DY * r).to(dk_ptr.dtype.element_ty), mask=tmask)
        tl.store(dv_ptr + toff, DV.to(dv_ptr.dtype.element_ty), mask=tmask)


KERNELS = {
    "fwd_scan": ea_fwd_scan,
    "chunk_prefix": ea_chunk_prefix,
    "bwd_dx_scan": ea_bwd_dx_scan,
    "bwd_rev_scan": ea_bwd_rev_scan,
    "chunk_suffix": ea_chunk_suffix,
    "nc_out": ea_nc_out,
    "nc_bwd_dx": ea_nc_bwd_dx,
    "nc_bwd_dkdv": ea_nc_bwd_dkdv,
}
