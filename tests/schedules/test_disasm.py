"""schedules.tvm.disasm: the instruction classes, the loop finder, and counts of real compiled kernels."""

from __future__ import annotations

import pytest

from schedules.tvm import disasm

# A listing in LLVM's AT&T form: an outer loop around an inner one, a forward branch, a spill.
LISTING = """
	.text
	.type	.L__tvm_parallel_lambda,@function
.L__tvm_parallel_lambda:
	pushq	%rbp
	vbroadcastss	.LCPI4_1(%rip), %zmm3
.LBB4_3:
	vmovups	(%r12,%r14,4), %zmm30
	.p2align	4
.LBB4_4:                                # comment
	vmulps	(%rdi,%r8,4), %zmm0, %zmm5
	vfmadd213ps	.LCPI4_3(%rip){1to16}, %zmm4, %zmm9
	vcmpnltps	%zmm3, %zmm7, %k1
	vmovaps	%zmm4, %zmm4 {%k1} {z}
	vmovaps	%zmm22, %zmm7
	vxorps	%xmm8, %xmm8, %xmm8
	vxorps	%xmm1, %xmm8, %xmm8
	vmovups	%zmm4, (%rsi,%r13,4)
	vmovups	%zmm30, 960(%rsp)
	vfrobps	%zmm1, %zmm2, %zmm3
	jge	.LBB4_5
	addl	$512, %r8d
.LBB4_5:
	decq	%r15
	jne	.LBB4_4
	vmovups	%zmm30, (%r12,%r14,4)
	cmpl	%r11d, -88(%rsp)
	jne	.LBB4_3
	retq
.Lfunc_end4:
"""


def test_classes_from_mnemonic_and_operands():
    fn, = disasm.parse_asm(LISTING)
    assert fn.name == ".L__tvm_parallel_lambda"
    insns = [it for it in fn.items if isinstance(it, disasm.Insn)]
    got = {(i.mnemonic, i.operands): i.cls for i in insns}
    assert got[("vmulps", ("(%rdi,%r8,4)", "%zmm0", "%zmm5"))] == "mul"
    assert got[("vfmadd213ps", (".LCPI4_3(%rip){1to16}", "%zmm4", "%zmm9"))] == "fma"
    assert got[("vcmpnltps", ("%zmm3", "%zmm7", "%k1"))] == "compare"
    assert got[("vmovaps", ("%zmm4", "%zmm4 {%k1} {z}"))] == "blend/select"
    assert got[("vmovaps", ("%zmm22", "%zmm7"))] == "move"
    assert got[("vxorps", ("%xmm8", "%xmm8", "%xmm8"))] == "zero idiom"
    assert got[("vxorps", ("%xmm1", "%xmm8", "%xmm8"))] == "logic"
    assert got[("vmovups", ("%zmm4", "(%rsi,%r13,4)"))] == "store"
    assert got[("vmovups", ("(%r12,%r14,4)", "%zmm30"))] == "load"
    assert got[("vfrobps", ("%zmm1", "%zmm2", "%zmm3"))] == "other"  # not in the table: seen, not hidden
    assert got[("decq", ("%r15",))] == "scalar"
    mul = next(i for i in insns if i.mnemonic == "vmulps")
    spill = next(i for i in insns if i.operands == ("%zmm30", "960(%rsp)"))
    assert mul.folded_load and not mul.stack_load and spill.stack_store
    assert all(c in disasm.GROUPS for c in set(disasm.CLASSES.values()) - {"move"})


def test_innermost_backward_branch_is_the_hot_loop():
    fn, = disasm.parse_asm(LISTING)
    assert sorted(lp.label for lp in disasm.loops(fn)) == [".LBB4_3", ".LBB4_4"]  # jge .LBB4_5 is forward
    hot, = disasm.hot_loops(fn)
    assert hot.label == ".LBB4_4"
    body = hot.body(fn)
    assert body[0].mnemonic == "vmulps" and body[-1].mnemonic == "jne" and len(body) == 14
    blk, = disasm.analyse(LISTING, ["scan"], {"t_unroll": 1, "d_tile": 16})
    assert blk["per_step"]["arith"] == 5 and blk["per_step"]["store"] == 2 and blk["per_step"]["other"] == 1
    assert blk["spill_stores_per_step"] == 1
    half, = disasm.analyse(LISTING, ["scan"], {"t_unroll": 2, "d_tile": 32})  # 2 steps of 32 channels
    assert half["per_step"]["arith"] == 2.5 and half["per_16_channel_steps"]["arith"] == 1.25
    with pytest.raises(disasm.DisasmError):
        disasm.analyse(LISTING, ["scan", "scan_tail"], {"t_unroll": 1, "d_tile": 16})


H, D = 2, 16


def _cfg(t_unroll):
    return {"loop": "d_t", "d_tile": 16, "h_tile": 1, "t_unroll": t_unroll, "parallel": True}


@pytest.mark.tvm
def test_causal_forward_counts():
    """Order 6: the 2(t+1) = 14 state FMAs and the 12 of the output's Horner forms are there, every step."""
    pytest.importorskip("tvm")
    res = disasm.count("forward", 6, "float32", True, H, D, _cfg(2))
    main, tail = res["blocks"]
    assert (main["block"], main["tail"], main["steps"]) == ("scan", False, 2)
    assert (tail["block"], tail["tail"], tail["steps"]) == ("scan_tail", True, 1)
    for blk in (main, tail):
        assert blk["vector_bits"] in (256, 512)
        # a step of 16 float32 lanes is one zmm vector with AVX-512, two ymm vectors with AVX2 only
        vectors = blk["lanes_per_step"] * 32 // blk["vector_bits"]
        arith = blk["per_step"]["arith"] / vectors
        assert blk["arith_per_step"]["fma"] / vectors >= 14 + 12
        assert blk["arith_per_step"]["div"] / vectors == 1  # o = num / den
        assert 40 < arith < 200
        assert blk["per_step"]["other"] == 0  # every mnemonic of the loop is in the table
    # Unrolling repeats the step: the arithmetic per step is the tail's (no step lost or counted twice).
    assert main["per_step"]["arith"] == tail["per_step"]["arith"] and main["matches_tail"]
    low = disasm.count("forward", 2, "float32", True, H, D, _cfg(2))
    assert low["blocks"][0]["per_step"]["arith"] < main["per_step"]["arith"] - 10


def test_a_backward_branch_that_enters_a_loop_is_not_its_header():
    """LLVM lays blocks out as it likes: here the loop's header is .LBB6_3 (reached by the fall-through from
    .LBB6_9), and ``je .LBB6_4`` jumps back in code order without closing a loop."""
    text = """
	.type	f,@function
f:
	jmp	.LBB6_3
.LBB6_4:
	vmulps	%zmm1, %zmm2, %zmm3
.LBB6_9:
	decl	%r8d
	je	.LBB6_10
.LBB6_3:
	vaddps	%zmm1, %zmm2, %zmm3
	cmpl	$1, %esi
	je	.LBB6_4
	jmp	.LBB6_9
.LBB6_10:
	retq
.Lfunc_end6:
"""
    fn, = disasm.parse_asm(text)
    lp, = disasm.loops(fn)
    assert lp.label == ".LBB6_3"
    assert [i.mnemonic for i in lp.body(fn)] == ["vmulps", "decl", "je", "vaddps", "cmpl", "je", "jmp"]
