"""Ahead-of-time builds of every shipped Triton kernel configuration for sm_80 and sm_90, without a GPU.

Shipped = every launch of ``ea_ops.backends.triton.launch`` (kernel x constexpr flags) with every ``num_warps`` of the
curated lists and defaults, at the default order 6 in bfloat16, plus the worst case for registers
(order 14, 16 Taylor terms per lane) in every dtype. Register use and spills come from the cubin through
the cuobjdump bundled with Triton. (The chunk length is a launch argument, not a compile-time constant.)
"""

from __future__ import annotations

import inspect

import pytest

pytest.importorskip("triton")

from schedules.triton import aot  # noqa: E402
from schedules.triton.configs import all_warps  # noqa: E402

ARCHS = [80, 90]


def shipped(arch: int) -> list[aot.Build]:
    from ea_ops.backends.triton.backend import MAX_ORDER

    return (aot.builds_for([6], ["bfloat16"], list(all_warps()), [arch])
            + aot.builds_for([MAX_ORDER], ["float32", "bfloat16", "float16"], [4], [arch]))


def test_ast_source_interface_is_the_one_used():
    from triton.compiler import ASTSource

    from ea_ops.backends.triton import cuda_kernels

    assert "constexprs" in inspect.signature(ASTSource.__init__).parameters
    build = aot.builds_for([6], ["bfloat16"], [4], [90])[0]
    consts = {k: v for k, v in aot.constexprs_for(build).items() if k in cuda_kernels.ea_fwd_scan.arg_names}
    sig, attrs = aot.signature_for(cuda_kernels.ea_fwd_scan, "bfloat16", consts)
    assert list(sig) == list(cuda_kernels.ea_fwd_scan.arg_names)
    assert sig["q_ptr"] == "*bf16" and sig["s_in_ptr"] == "*fp32" and sig["bounds_ptr"] == "*i32"
    assert sig["r"] == "fp32" and sig["HD"] == "i32" and sig["ORDER"] == "constexpr"
    assert all(len(k) == 1 and v == [["tt.divisibility", 16]] for k, v in attrs.items())


def test_every_launch_is_built():
    from ea_ops.backends.triton import cuda_kernels, launch

    assert {k for k, _ in launch.LAUNCHES} == set(cuda_kernels.KERNELS)
    assert aot.parse_target("cuda:sm_90") == 90 and aot.parse_target("sm_80") == 80
    with pytest.raises(ValueError):
        aot.parse_target("cpu")


@pytest.mark.parametrize("arch", ARCHS)
def test_shipped_builds_compile_without_spills(arch):
    assert aot.cuobjdump_path() is not None, "cuobjdump should be bundled with Triton"
    problems = []
    builds = shipped(arch)
    assert len(builds) == len(set(builds)) >= 14 * 4
    for b in builds:
        ck = aot.compile_build(b)
        ptx = ck.asm["ptx"]
        assert f".target sm_{arch}" in ptx, b.name
        use = aot.resource_usage(ck.asm["cubin"])
        # spills go to local memory through the stack frame; shared memory would mean a layout
        # conversion in every row (the kernels keep the Taylor index inside one thread by design)
        if use["local"] or use["stack"] or use["shared"] or use["registers"] > 255:
            problems.append((b.name, use))
    assert not problems, problems
