"""TVM schedules: the time-order check, every design-space sample computes the right thing, knobs."""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("tvm")

import tvm  # noqa: E402
from tvm import s_tir  # noqa: E402

import ea_ops  # noqa: E402
from ea_ops.backends.tvm import cpu_kernels, ops, schedule  # noqa: E402
from ea_ops.backends.tvm.target import cpu_target  # noqa: E402
from schedules.tvm import spaces  # noqa: E402
from tests.helpers import qkv, rel_err  # noqa: E402

pytestmark = pytest.mark.tvm
H, D, ORDER = 2, 16, 2


def _sch(kernel="forward", causal=True):
    return s_tir.Schedule(cpu_kernels.build_func(kernel, ORDER, "float32", causal, H, D))


def _t_loop(sch, block="scan"):
    return sch.get_loops(sch.get_sblock(block))[2]


def bad_parallel(sch):
    sch.parallel(_t_loop(sch))


def bad_vectorize(sch):
    sch.vectorize(_t_loop(sch))


def bad_reorder_split(sch):
    t_o, t_i = sch.split(_t_loop(sch), factors=[None, 4])
    sch.reorder(t_i, t_o)


def bad_fuse_with_d(sch):
    b, h, t, d = sch.get_loops(sch.get_sblock("scan"))
    sch.parallel(sch.fuse(t, d))


def bad_reverse_only(sch):
    sch.parallel(_t_loop(sch, "reverse"))


@pytest.mark.parametrize("bad", [bad_parallel, bad_vectorize, bad_reorder_split, bad_fuse_with_d])
def test_schedules_that_break_the_time_order_are_caught(bad):
    sch = _sch()
    bad(sch)
    with pytest.raises(schedule.ScheduleError, match="time"):
        schedule.check_time_loops(sch.mod)


def test_the_check_covers_every_time_block():
    sch = _sch("backward", True)
    bad_reverse_only(sch)
    with pytest.raises(schedule.ScheduleError, match="reverse"):
        schedule.check_time_loops(sch.mod)
    assert schedule.check_time_loops(_sch("backward", False).mod) == 6  # three blocks and their tails


def test_the_check_is_not_vacuous_a_reordered_time_loop_gives_wrong_answers():
    """Why the check matters: the hidden scan dependence lets TVM build an out-of-order scan silently."""
    sch = _sch()
    bad_reorder_split(sch)
    lib = tvm.compile(sch.mod, target=cpu_target())
    q, k, v = qkv((1, 64, H, D), dtype=torch.float32, seed=0)
    o = torch.full_like(q, math.nan)
    lib["main"](q, k, v, o, *ops._empty_state(1, H, ORDER + 1, D, "cpu"), 1.0)
    want, _ = ea_ops.ea_attention(q, k, v, order=ORDER, backend="torch")
    assert rel_err(o, want) > 1e-3
    with pytest.raises(schedule.ScheduleError):
        schedule.check_time_loops(sch.mod)


@pytest.mark.parametrize("kernel, causal", [("forward", True), ("forward", False), ("backward", True)])
def test_design_space_samples_pass_the_check_and_compute_correctly(kernel, causal):
    """Sample the MetaSchedule space (every structural branch, random knobs), build, compare."""
    func = cpu_kernels.build_func(kernel, ORDER, "float32", causal, H, D)
    B, T = 2, 21
    q, k, v = qkv((B, T, H, D), dtype=torch.float32, seed=1, requires_grad=True)
    want, _ = ea_ops.ea_attention(q.double(), k.double(), v.double(), order=ORDER, causal=causal,
                                  backend="torch")
    g = torch.randn(B, T, H, D, generator=torch.Generator().manual_seed(3))
    wgrads = None
    if kernel == "backward":
        qq, kk, vv = (t.detach().double().requires_grad_() for t in (q, k, v))
        wo, _ = ea_ops.ea_attention(qq, kk, vv, order=ORDER, causal=causal, backend="torch")
        wgrads = torch.autograd.grad(wo, (qq, kk, vv), g.double())
    seen = set()
    for seed in range(3):
        sch = s_tir.Schedule(func, seed=seed + 1)
        for s in spaces.cpu_space(kernel, causal)(sch):
            schedule.check_time_loops(s.mod)
            cfg = spaces.knobs_from_trace(s.trace)
            seen.add((cfg["loop"], cfg["parallel"]))
            # The knobs re-applied by the runtime give the same program as the sampled schedule.
            again = schedule.schedule_cpu(func, kernel, causal, schedule.validate_cpu_config(cfg, H, D))
            tvm.ir.assert_structural_equal(again, s.mod)
            if seed:
                continue
            lib = tvm.compile(s.mod, target=cpu_target())
            qd, kd, vd = (t.detach() for t in (q, k, v))
            st = ops._empty_state(B, H, ORDER + 1, D, "cpu")
            if kernel == "forward":
                o = torch.full_like(qd, math.nan)
                lib["main"](qd, kd, vd, o, *st, 1.0)
                assert rel_err(o, want) < 2e-5, cfg
            else:
                nan = [torch.full_like(qd, math.nan) for _ in range(6)]
                uw = [torch.zeros(B, H, ORDER + 1, D) for _ in range(2)]
                lib["main"](qd, kd, vd, g, *st, *nan[:3], *uw, torch.full((B, H, D), -math.inf),
                            *nan[3:], 1.0)
                for got, exp in zip(nan[3:], wgrads):
                    assert rel_err(got, exp) < 5e-5, cfg
    assert seen == set(spaces.SPACES)


def test_validate_cpu_config_names_the_bad_knob():
    for bad, word in [({"loop": "x"}, "loop"), ({"loop": "d_t", "d_tile": 5}, "d_tile"),
                      ({"loop": "d_t", "t_unroll": 3}, "t_unroll"), ({"loop": "d_t", "parallel": 1}, "parallel"),
                      ([], "object")]:
        with pytest.raises(schedule.ScheduleError, match=word):
            schedule.validate_cpu_config(bad, H, D)
    assert schedule.validate_cpu_config(schedule.default_cpu_config("forward", H, D), H, D)


SPLIT_CONFIGS = [*({"loop": "d_t", "d_tile": D, "h_tile": 1, "t_unroll": u, "parallel": True}
                   for u in schedule.T_UNROLLS),
                 {"loop": "blocked", "d_tile": D // 2, "h_tile": 2, "t_unroll": 4, "parallel": True, "t_block": 16},
                 {"loop": "blocked", "d_tile": D, "h_tile": 1, "t_unroll": 8, "parallel": False, "t_block": 32}]


@pytest.mark.parametrize("kernel", ["forward", "backward"])
@pytest.mark.parametrize("cfg", SPLIT_CONFIGS, ids=lambda c: f"{c['loop']}-u{c['t_unroll']}-b{c.get('t_block')}")
def test_unrolled_time_loops_cover_every_length_around_the_split(kernel, cfg):
    """The main block takes T - T % time_align steps unrolled (and blocked), the tail the rest: lengths below,
    at and beyond the split, NaN-poisoned outputs, causal forward and backward against the float64 reference."""
    align = schedule.time_align(schedule.validate_cpu_config(cfg, H, D))
    func = cpu_kernels.build_func(kernel, ORDER, "float32", True, H, D, align=align)
    lib = tvm.compile(schedule.schedule_cpu(func, kernel, True, cfg), target=cpu_target())
    assert align % cfg["t_unroll"] == 0
    for T in (1, align - 1, align, 2 * align + 3):
        q, k, v = qkv((1, T, H, D), dtype=torch.float32, seed=T)
        qq, kk, vv = (t.double().requires_grad_() for t in (q, k, v))
        want, fs = ea_ops.ea_attention(qq, kk, vv, order=ORDER, backend="torch", output_final_state=True)
        st = ops._empty_state(1, H, ORDER + 1, D, "cpu")
        if kernel == "forward":
            o = torch.full_like(q, math.nan)
            lib["main"](q, k, v, o, *st, 1.0)
            assert rel_err(o, want) < 2e-5, T
            assert rel_err(st[0], fs.S) < 2e-5 and rel_err(st[1], fs.Z) < 2e-5, T
        else:
            g = torch.randn(1, T, H, D, generator=torch.Generator().manual_seed(T))
            wgrads = torch.autograd.grad(want, (qq, kk, vv), g.double())
            nan = [torch.full_like(q, math.nan) for _ in range(6)]
            uw = [torch.zeros(1, H, ORDER + 1, D) for _ in range(2)]
            lib["main"](q, k, v, g, *st, *nan[:3], *uw, torch.full((1, H, D), -math.inf), *nan[3:], 1.0)
            # Errors against the gradients' scale: at T = 1 the exact dq and dk are 0 (a lone key), and the
            # first position's dq, dk are float32 cancellation noise of ~1e-6 at any T.
            scale = max(w.abs().max().item() for w in wgrads)
            for got, exp in zip(nan[3:], wgrads):
                assert (got.double() - exp).abs().max().item() < 5e-6 * scale, T
