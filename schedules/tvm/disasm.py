"""Instructions per time step of the compiled TVM CPU kernels, counted in their assembly (no timing).

``python -m schedules.tvm.disasm --kernel forward --order 6`` builds one kernel as the runtime does
(``build.build_cpu``: ``cpu_kernels.build_func``, ``schedule.schedule_cpu`` with a CPU config, ``tvm.compile``
for ``target.cpu_target()``), reads LLVM's assembly of it (``Executable.mod.inspect_source("asm")``, AT&T
syntax: the same instructions the shared object holds) and counts the hot time loops:

- A *loop* is a natural loop of the function's control-flow graph: a back edge (a branch to a block that
  dominates it, i.e. a backward branch target) and the blocks that reach it through that target. The *hot*
  loops are the innermost ones (no other loop inside) that hold vector arithmetic.
- Hot loops are matched to the time blocks in program order (``scan``, ``scan_tail``, ...: one
  ``__tvm_parallel_lambda`` per block when the config is parallel, loops in code order when not).
- A main block's hot loops hold ``t_unroll`` steps (the tail block's one); a step is one ``d_tile``-lane
  vector of channels at one time position. Counts are given per step and per 16 channel-steps
  (``x 16 / d_tile``): one zmm register of float32 lanes on AVX-512, two ymm halves on AVX2. This assumes
  LLVM did not unroll the loop further itself: it does so for small loops without loop-carried state (the
  non-causal ``out`` block, two steps an iteration), not for the scans; the division and the exponentials'
  rounds per step (``arith_per_step``) show which.
- The causal forward under ``blocked`` is written as loops (``cpu_blocked``), not scheduled blocks: its hot
  loops are told apart by what they hold (``analyse_blocked``): the ``block minimum`` pre-pass (``y = r k``,
  ``y^2`` and a min per step, kept for the steps; as many steps an iteration as it has mins), the ``stabilised``
  steps (``t_unroll`` an iteration; at most one select per step, the division's count), the ``per step``
  fallback (three selects a step) and its ``tail`` (one step, in the second parallel function); loops of
  multiplies alone (changes of basis, once per block) are left out.
- Each instruction gets one class from ``CLASSES`` (mnemonic -> class, the one copy of the rule) or from
  its operands where the mnemonic alone does not say: a vector move is a load (memory source), a store
  (memory destination), a select (register to register under a mask, ``{%k1}``) or a register move;
  ``xor`` of a register with itself is the zeroing idiom. Classes group into arithmetic, loads, stores,
  broadcasts/shuffles, moves, mask ops, scalar (address arithmetic and the loop's own count and branch) and
  "other" (a vector mnemonic missing from the table: extend it). Arithmetic that reads memory directly
  (a folded load, or an embedded ``{1to16}`` constant broadcast) counts as arithmetic and is also counted
  under ``folded_loads``. Loads and stores addressing ``%rsp`` (including folded operands) are register
  spills: counted in their class and again under ``spill_loads``/``spill_stores``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any

# ----------------------------------------------------------------------------------------- the rule
ARITH = ("fma", "mul", "add/sub", "min/max", "div", "sqrt", "compare", "blend/select", "logic", "shift",
         "int add/sub", "int mul", "convert", "round")
GROUPS = {**{c: "arith" for c in ARITH}, "load": "load", "store": "store", "broadcast/shuffle": "shuffle",
          "move": "move", "zero idiom": "move", "mask": "mask", "scalar fp": "scalar", "scalar": "scalar",
          "other": "other"}
GROUP_ORDER = ("arith", "load", "store", "shuffle", "move", "mask", "scalar", "other")

_FP = ("ps", "pd")
_FMA = [f"vf{neg}m{op}{n}{s}" for neg in ("", "n") for op in ("add", "sub") for n in ("132", "213", "231")
        for s in _FP] + [f"vfm{op}{n}{s}" for op in ("addsub", "subadd") for n in ("132", "213", "231")
                         for s in _FP]
_SCALAR_FP = [f"vf{neg}m{op}{n}{s}" for neg in ("", "n") for op in ("add", "sub") for n in ("132", "213", "231")
              for s in ("ss", "sd")] + [f"v{op}{s}" for op in ("add", "sub", "mul", "div", "min", "max", "sqrt")
                                        for s in ("ss", "sd")] + ["vmovss", "vmovsd", "vcvtsi2ss", "vcvtss2sd",
                                                                  "vcvtsd2ss", "vcvttss2si", "vucomiss",
                                                                  "vcomiss"]
_MOVES = ("vmovups", "vmovaps", "vmovupd", "vmovapd", "vmovdqu", "vmovdqa", "vmovdqu8", "vmovdqu16",
          "vmovdqu32", "vmovdqu64", "vmovdqa32", "vmovdqa64")


def _each(cls: str, names) -> dict[str, str]:
    return {n: cls for n in names}


CLASSES: dict[str, str] = {
    **_each("fma", _FMA),
    **_each("mul", ("vmulps", "vmulpd")),
    **_each("add/sub", ("vaddps", "vsubps", "vaddpd", "vsubpd")),
    **_each("min/max", ("vminps", "vmaxps", "vminpd", "vmaxpd")),
    **_each("div", ("vdivps", "vdivpd", "vrcpps", "vrcp14ps")),
    **_each("sqrt", ("vsqrtps", "vsqrtpd", "vrsqrtps", "vrsqrt14ps")),
    # vcmp<predicate>ps is normalised to vcmpps (_mnemonic_class)
    **_each("compare", ("vcmpps", "vcmppd", "vpcmpeqd", "vpcmpgtd", "vpcmpd", "vpcmpud", "vpcmpeqw",
                        "vpcmpgtw", "vfpclassps", "vptestmd", "vptestnmd")),
    **_each("blend/select", ("vblendmps", "vblendmpd", "vpblendmd", "vpblendmq", "vblendvps", "vblendps",
                             "vpblendd", "vpblendvb")),
    **_each("logic", ("vandps", "vandnps", "vorps", "vxorps", "vandpd", "vandnpd", "vorpd", "vxorpd", "vpand",
                      "vpandn", "vpor", "vpxor", "vpandd", "vpandnd", "vpord", "vpxord", "vpandq", "vpandnq",
                      "vporq", "vpxorq", "vpternlogd", "vpternlogq")),
    **_each("shift", ("vpslld", "vpsrld", "vpsrad", "vpsllq", "vpsrlq", "vpsllvd", "vpsrlvd", "vpsravd",
                      "vpsllw", "vpsrlw", "vpsraw")),
    **_each("int add/sub", ("vpaddd", "vpsubd", "vpaddq", "vpsubq", "vpaddw", "vpsubw")),
    **_each("int mul", ("vpmulld", "vpmullq", "vpmuludq")),
    **_each("convert", ("vcvttps2dq", "vcvtps2dq", "vcvtdq2ps", "vcvtps2ph", "vcvtph2ps", "vcvtps2pd",
                        "vcvtpd2ps", "vcvtneps2bf16", "vpmovsxwd", "vpmovzxwd", "vpmovdw", "vpmovsdw",
                        "vpmovusdw", "vpackssdw", "vpackusdw")),
    **_each("round", ("vrndscaleps", "vroundps", "vrndscalepd", "vroundpd")),
    **_each("broadcast/shuffle", ("vbroadcastss", "vbroadcastsd", "vpbroadcastd", "vpbroadcastq",
                                  "vpbroadcastw", "vbroadcastf128", "vbroadcastf32x4", "vbroadcasti32x4",
                                  "vpermps", "vpermd", "vpermilps", "vpermt2ps", "vpermi2ps", "vpermt2d",
                                  "vpermi2d", "vpermq", "vpermpd", "vperm2f128", "vperm2i128", "vshufps",
                                  "vshuff32x4", "vshufi32x4", "vshuff64x2", "vinsertf128", "vinserti128",
                                  "vinsertf32x4", "vinsertf64x4", "vinserti32x4", "vinserti64x4",
                                  "vextractf128", "vextracti128", "vextractf32x4", "vextractf64x4",
                                  "vextracti32x4", "vextracti64x4", "vunpcklps", "vunpckhps", "vpunpcklwd",
                                  "vpunpckhwd", "vpshufd", "vpshufb", "vmovshdup", "vmovsldup", "valignd",
                                  "vpalignr", "vinsertps", "vextractps")),
    **_each("mask", ("kmovw", "kmovb", "kmovd", "kmovq", "kandw", "kandnw", "korw", "kxorw", "kxnorw", "knotw",
                     "kortestw", "ktestw", "kshiftrw", "kshiftlw", "kunpckbw", "kandb", "korb", "knotb")),
    **_each("scalar fp", _SCALAR_FP),
    **_each("move", _MOVES),  # refined by the operands: load, store, select or move (_classify)
    "vzeroupper": "scalar",
}

_VCMP = re.compile(r"^vcmp[a-z_]*?(ps|pd)$")
_REG = re.compile(r"%([xyz]mm)\d+")
_BITS = {"xmm": 128, "ymm": 256, "zmm": 512}


def _mnemonic_class(mn: str) -> str:
    m = _VCMP.match(mn)
    if m:
        return CLASSES["vcmp" + m.group(1)]
    if mn in CLASSES:
        return CLASSES[mn]
    return "other" if mn[:1] in ("v", "k") else "scalar"


def split_operands(text: str) -> list[str]:
    """AT&T operands split at the commas outside parentheses and braces."""
    out, depth, cur = [], 0, []
    for ch in text:
        if ch in "({":
            depth += 1
        elif ch in ")}":
            depth -= 1
        if ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if "".join(cur).strip():
        out.append("".join(cur).strip())
    return out


def _is_mem(op: str) -> bool:
    return "(" in op


@dataclass(frozen=True)
class Insn:
    mnemonic: str
    operands: tuple[str, ...]

    @property
    def cls(self) -> str:
        return classify(self.mnemonic, self.operands)

    @property
    def stack_load(self) -> bool:
        """A vector register filled from the stack: a spill reload (a load or a folded operand)."""
        return (self.cls == "load" or self.folded_load) and any("%rsp" in o for o in self.operands[:-1])

    @property
    def stack_store(self) -> bool:
        """A vector register spilled to the stack."""
        return self.cls == "store" and "%rsp" in self.operands[-1]

    @property
    def folded_load(self) -> bool:
        """Vector arithmetic (or a shuffle) reading one operand from memory."""
        return GROUPS[self.cls] in ("arith", "shuffle") and any(_is_mem(o) for o in self.operands[:-1])


def classify(mnemonic: str, operands) -> str:
    """The class of one instruction (``CLASSES``, refined by operands for moves and the zeroing idiom)."""
    cls = _mnemonic_class(mnemonic)
    ops = list(operands)
    if cls == "move" and ops:
        if _is_mem(ops[-1]):
            return "store"
        if any(_is_mem(o) for o in ops[:-1]):
            return "load"
        return "blend/select" if "{%k" in ops[-1] else "move"
    if cls == "logic" and mnemonic in ("vxorps", "vpxor", "vpxord", "vpxorq", "vxorpd") and len(ops) == 3 \
            and len({o.strip() for o in ops}) == 1:
        return "zero idiom"
    return cls


# ----------------------------------------------------------------------------------------- parsing
@dataclass
class Function:
    name: str
    items: list  # ("label", name) or Insn


def parse_asm(text: str) -> list[Function]:
    """The functions of an LLVM assembly listing (AT&T), each as its labels and instructions in order."""
    funcs: list[Function] = []
    cur: Function | None = None
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.match(r"\.type\s+([^,]+),@function", line)
        if m:
            cur = Function(m.group(1), [])
            funcs.append(cur)
            continue
        if cur is None:
            continue
        if line.startswith(".Lfunc_end"):
            cur = None
            continue
        if line.endswith(":"):
            cur.items.append(("label", line[:-1]))
            continue
        if line.startswith("."):
            continue  # a directive
        parts = line.split(None, 1)
        mn = parts[0]
        if mn.startswith("{"):  # a prefix such as {vex}
            parts = parts[1].split(None, 1)
            mn = parts[0]
        cur.items.append(Insn(mn, tuple(split_operands(parts[1])) if len(parts) > 1 else ()))
    return funcs


_ENDS = ("jmp", "ret", "retq", "ud2")


def _blocks(fn: Function) -> tuple[list[tuple[int, int]], list[set[int]], dict[str, int]]:
    """Basic blocks of ``fn`` as item ranges ``[start, end)``, their successors, and label -> block."""
    starts = {0}
    for i, it in enumerate(fn.items):
        if isinstance(it, tuple):
            starts.add(i)
        elif it.mnemonic.startswith("j") or it.mnemonic in _ENDS:
            starts.add(i + 1)
    bounds = sorted(x for x in starts if x < len(fn.items))
    ranges = list(zip(bounds, bounds[1:] + [len(fn.items)], strict=True))
    label_of = {}
    for k, (lo, hi) in enumerate(ranges):
        for it in fn.items[lo:hi]:
            if isinstance(it, tuple):
                label_of[it[1]] = k
    succ: list[set[int]] = []
    for k, (lo, hi) in enumerate(ranges):
        last = next((it for it in reversed(fn.items[lo:hi]) if isinstance(it, Insn)), None)
        out = set()
        if last is not None and last.mnemonic.startswith("j") and len(last.operands) == 1 \
                and last.operands[0] in label_of:
            out.add(label_of[last.operands[0]])
        if k + 1 < len(ranges) and not (last is not None and last.mnemonic in _ENDS):
            out.add(k + 1)
        succ.append(out)
    return ranges, succ, label_of


@dataclass(frozen=True)
class Loop:
    """A natural loop: a back edge's target (``header``) and the blocks that reach the edge through it."""

    function: str
    label: str  # the header's label
    header: int
    nodes: frozenset  # basic-block indices
    ranges: tuple  # every block's item range

    def body(self, fn: Function) -> list[Insn]:
        """The loop's instructions in code order."""
        return [it for k in sorted(self.nodes) for it in fn.items[slice(*self.ranges[k])] if isinstance(it, Insn)]


def loops(fn: Function) -> list[Loop]:
    """The natural loops of ``fn`` (back edges ``u -> h`` with ``h`` dominating ``u``; one per header)."""
    ranges, succ, _ = _blocks(fn)
    n = len(ranges)
    pred: list[set[int]] = [set() for _ in range(n)]
    for u, vs in enumerate(succ):
        for v in vs:
            pred[v].add(u)
    dom = [set(range(n)) for _ in range(n)]
    dom[0] = {0}
    changed = True
    while changed:
        changed = False
        for k in range(1, n):
            new = set.intersection(*(dom[p] for p in pred[k])) | {k} if pred[k] else {k}
            if new != dom[k]:
                dom[k], changed = new, True
    bodies: dict[int, set[int]] = {}
    for u in range(n):
        for h in succ[u]:
            if h in dom[u]:
                body, work = bodies.setdefault(h, {h}), [u]
                while work:
                    x = work.pop()
                    if x not in body:
                        body.add(x)
                        work.extend(pred[x])
    out = []
    for h, body in sorted(bodies.items()):
        lab = next((it[1] for it in fn.items[slice(*ranges[h])] if isinstance(it, tuple)), f"block{h}")
        out.append(Loop(fn.name, lab, h, frozenset(body), tuple(ranges)))
    return out


def hot_loops(fn: Function) -> list[Loop]:
    """The innermost loops of ``fn`` (holding no other loop's header) with vector arithmetic, in code order."""
    all_loops = loops(fn)
    inner = [lp for lp in all_loops if not any(o.header != lp.header and o.header in lp.nodes for o in all_loops)]
    return [lp for lp in inner if any(GROUPS[i.cls] == "arith" for i in lp.body(fn))]


# ----------------------------------------------------------------------------------------- counting
class DisasmError(RuntimeError):
    """The hot loops could not be matched to the kernel's time blocks."""


def time_blocks(kernel: str, causal: bool) -> list[str]:
    """The kernel's time blocks in program order: each of ``cpu_kernels.SCAN_BLOCKS`` then its tail block
    (``cpu_kernels._time_block``; a symbolic ``T`` always has one). The step's hot loop runs over channels."""
    from ea_ops.backends.tvm.cpu_kernels import SCAN_BLOCKS, TAIL

    if kernel == "step":  # T = 1: the main block is empty; the tail's one step, its loop over channels
        return [name + TAIL for name in SCAN_BLOCKS[("forward", True)]]
    return [name for base in SCAN_BLOCKS[(kernel, causal)] for name in (base, base + TAIL)]


def _tally(insns: list[Insn], steps: int, lanes: int) -> dict[str, Any]:
    classes = Counter(i.cls for i in insns)
    groups = Counter()
    for c, n in classes.items():
        groups[GROUPS[c]] += n
    per = steps  # instructions per step = count / steps
    scale = 16 / lanes
    by_mn_cls = {}
    for i in insns:
        key = i.mnemonic if i.cls == _mnemonic_class(i.mnemonic) else f"{i.mnemonic} ({i.cls})"
        by_mn_cls.setdefault(key, [i.cls, 0])[1] += 1
    widths = [_BITS[w] for i in insns if GROUPS[i.cls] == "arith" for w in _REG.findall(" ".join(i.operands))]
    return {
        "instructions": len(insns),
        "per_step": {g: groups.get(g, 0) / per for g in GROUP_ORDER} | {"total": len(insns) / per},
        "per_16_channel_steps": {g: groups.get(g, 0) * scale / per for g in GROUP_ORDER}
        | {"total": len(insns) * scale / per},
        "arith_per_step": {c: classes[c] / per for c in ARITH if classes.get(c)},
        "other_classes_per_step": {c: n / per for c, n in sorted(classes.items()) if GROUPS[c] != "arith"},
        "folded_loads_per_step": sum(i.folded_load for i in insns) / per,
        "spill_loads_per_step": sum(i.stack_load for i in insns) / per,
        "spill_stores_per_step": sum(i.stack_store for i in insns) / per,
        "mnemonics_per_step": {k: {"class": v[0], "per_step": v[1] / per}
                               for k, v in sorted(by_mn_cls.items(), key=lambda kv: (-kv[1][1], kv[0]))},
        "vector_bits": max(widths, default=0),
    }


def analyse(asm: str, blocks: list[str], cfg: dict[str, Any], tail_suffix: str = "_tail") -> list[dict]:
    """Per time block (``blocks`` in program order): its hot loops and their counts per step."""
    funcs = parse_asm(asm)
    hot = [(fn, hot_loops(fn)) for fn in funcs]
    hot = [(fn, lps) for fn, lps in hot if lps]
    if len(hot) == len(blocks):
        groups = hot
    elif len(hot) == 1 and len(hot[0][1]) == len(blocks):
        fn = hot[0][0]
        groups = [(fn, [lp]) for lp in hot[0][1]]
    else:
        raise DisasmError(f"{len(blocks)} time blocks {blocks}, but hot loops in {len(hot)} functions "
                          f"{[(fn.name, len(lps)) for fn, lps in hot]}: cannot match them")
    out = []
    for name, (fn, lps) in zip(blocks, groups, strict=True):
        tail = name.endswith(tail_suffix)
        steps = 1 if tail else cfg["t_unroll"]
        insns = [i for lp in lps for i in lp.body(fn)]
        rec = {"block": name, "tail": tail, "function": fn.name, "loops": [lp.label for lp in lps],
               "steps": steps, "lanes_per_step": cfg["d_tile"]}
        rec.update(_tally(insns, steps, cfg["d_tile"]))
        out.append(rec)
    # A main block and its tail compute the same step: different arithmetic per step means LLVM unrolled
    # one of them itself (or the match is wrong), so its steps per iteration are not the schedule's.
    per = {b["block"]: b["per_step"]["arith"] for b in out}
    for b in out:
        if not b["tail"] and b["block"] + tail_suffix in per:
            b["matches_tail"] = per[b["block"]] == per[b["block"] + tail_suffix]
    return out


def analyse_blocked(asm: str, cfg: dict[str, Any]) -> list[dict]:
    """The hot loops of the block-stabilised causal forward (``cpu_blocked``), by role (module docstring)."""
    funcs = [(fn, hot_loops(fn)) for fn in parse_asm(asm)]
    funcs = [(fn, lps) for fn, lps in funcs if lps]
    out = []
    for i, (fn, lps) in enumerate(funcs):
        for lp in lps:
            insns = lp.body(fn)
            arith = Counter(x.cls for x in insns if GROUPS[x.cls] == "arith")
            if set(arith) <= {"mul"}:
                continue  # a change of basis or a rebase: once per block, not per step
            if set(arith) <= {"mul", "min/max"}:
                role, steps = "block minimum", arith["min/max"]
            elif i == len(funcs) - 1 and len(funcs) > 1:
                role, steps = "tail", 1
            elif arith.get("blend/select", 0) <= 1.5 * max(1, arith["div"]):  # one division a step, both forms;
                role, steps = "stabilised", cfg["t_unroll"]  # the per-step form selects 3 times a step, this one once
            else:
                role, steps = "per step", 1
            rec = {"block": role, "tail": role == "tail", "function": fn.name, "loops": [lp.label],
                   "steps": steps, "lanes_per_step": cfg["d_tile"]}
            rec.update(_tally(insns, steps, cfg["d_tile"]))
            out.append(rec)
    roles = [r["block"] for r in out]
    if sorted(set(roles)) != sorted({"block minimum", "stabilised", "per step", "tail"}) or len(roles) != 4:
        raise DisasmError(f"block-stabilised forward: hot loops {roles}, expected the block minimum, the "
                          "stabilised steps, the per-step fallback and the tail once each")
    return out


def analyse_blocked_backward(asm: str, cfg: dict[str, Any], order: int) -> list[dict]:
    """The hot loops of the block-stabilised causal backward (``cpu_blocked.backward``), by role. Its four
    parallel functions run in program order: the re-scan's blocks, its tail, the reverse scan's tail and its
    blocks. The re-scan's loops are told apart as the forward's (one division a step in both forms); the
    reverse scan's by their adds: a stabilised step adds its query to the ``2(t+1)`` sums, a per-step one
    rescales them with fused multiply-adds, and each has one exponential (one shift) per step or two."""
    if not cfg["parallel"]:
        raise DisasmError("the block-stabilised backward is analysed for parallel configs only")
    funcs = [(fn, lps) for fn in parse_asm(asm) if (lps := hot_loops(fn))]
    if len(funcs) != 4:
        raise DisasmError(f"block-stabilised backward: {len(funcs)} functions with hot loops, expected 4")
    out = []
    for i, (fn, lps) in enumerate(funcs):
        for lp in lps:
            insns = lp.body(fn)
            arith = Counter(x.cls for x in insns if GROUPS[x.cls] == "arith")
            if set(arith) <= {"mul"}:
                continue  # a change of basis or a rebase: once per block, not per step
            if i in (1, 2):
                role, steps = ("re-scan tail", "reverse tail")[i - 1], 1
            elif i == 0 and set(arith) <= {"mul", "min/max"}:
                role, steps = "re-scan block minimum", arith["min/max"]
            elif i == 0:
                fast = arith.get("blend/select", 0) <= 1.5 * max(1, arith["div"])
                role, steps = ("re-scan stabilised", cfg["t_unroll"]) if fast else ("re-scan per step", 1)
            else:
                fast = arith.get("add/sub", 0) >= (order + 1) * max(1, arith.get("shift", 0))
                role, steps = ("reverse stabilised", cfg["t_unroll"]) if fast else ("reverse per step", 1)
            rec = {"block": role, "tail": role.endswith("tail"), "function": fn.name, "loops": [lp.label],
                   "steps": steps, "lanes_per_step": cfg["d_tile"]}
            rec.update(_tally(insns, steps, cfg["d_tile"]))
            out.append(rec)
    want = {"re-scan block minimum", "re-scan stabilised", "re-scan per step", "re-scan tail", "reverse tail",
            "reverse stabilised", "reverse per step"}
    roles = [r["block"] for r in out]
    if set(roles) != want or len(roles) != len(want):
        raise DisasmError(f"block-stabilised backward: hot loops {roles}, expected {sorted(want)} once each")
    return out


def build(kernel: str, order: int = 6, dtype: str = "float32", causal: bool = True, H: int = 8, D: int = 64,
          cfg: dict | None = None, mcpu: str | None = None):
    """``(asm, blocks, cfg, target)``: one kernel built as the runtime builds it (``build.build_cpu``), and
    its assembly. ``mcpu``: the same steps for another LLVM CPU (``target.cpu_target(mcpu)``)."""
    import tvm

    from ea_ops.backends.tvm import build as runtime_build
    from ea_ops.backends.tvm import schedule
    from ea_ops.backends.tvm.target import cpu_target

    if cfg is None:
        cfg = schedule.default_cpu_config(kernel, H, D)
    cfg = schedule.validate_cpu_config(cfg, H, D)
    target = cpu_target(mcpu)
    if mcpu is None:
        lib = runtime_build.build_cpu(kernel, causal, order, dtype, H, D, cfg)
    else:
        lib = tvm.compile(schedule.cpu_module(kernel, causal, order, dtype, H, D, cfg), target=target)
    return lib.mod.inspect_source("asm"), time_blocks(kernel, causal), cfg, target


def count(kernel: str, order: int = 6, dtype: str = "float32", causal: bool = True, H: int = 8, D: int = 64,
          cfg: dict | None = None, mcpu: str | None = None) -> dict[str, Any]:
    """Instructions per step of each time block of one compiled kernel (see the module docstring).

    ``cfg``: a CPU config (``schedule.validate_cpu_config``'s knobs); default ``default_cpu_config``.
    ``mcpu``: an LLVM CPU name to build for instead of this machine's (e.g. ``haswell`` for AVX2).
    """
    return _count(kernel, order, dtype, causal, H, D, cfg, mcpu)[0]


def _count(kernel, order, dtype, causal, H, D, cfg, mcpu) -> tuple[dict[str, Any], str]:
    import tvm
    from tvm.target import codegen

    if kernel == "step":
        causal = True
    asm, blocks, cfg, target = build(kernel, order, dtype, causal, H, D, cfg, mcpu)
    res = {
        "kernel": kernel, "order": order, "dtype": dtype, "causal": causal, "H": H, "D": D, "config": cfg,
        "target": str(target), "mcpu": str(target.attrs.get("mcpu", "")), "tvm": tvm.__version__,
        "llvm": int(codegen.llvm_version_major()),
        "source": "LLVM assembly, Executable.mod.inspect_source('asm')",
        "blocks": _analyse(asm, kernel, causal, blocks, cfg, order),
    }
    return res, asm


def _analyse(asm: str, kernel: str, causal: bool, blocks: list[str], cfg: dict[str, Any], order: int) -> list[dict]:
    from ea_ops.backends.tvm.cpu_kernels import TAIL

    if causal and cfg["loop"] == "blocked" and kernel == "forward":
        return analyse_blocked(asm, cfg)
    if causal and cfg["loop"] == "blocked" and kernel == "backward":
        return analyse_blocked_backward(asm, cfg, order)
    return analyse(asm, blocks, cfg, TAIL)


# ----------------------------------------------------------------------------------------- output
def _fmt(x: float) -> str:
    return f"{x:g}" if x == int(x) else f"{x:.2f}"


def table(res: dict[str, Any], tails: bool = False) -> str:
    """A readable report: per block the groups per step, then the per-mnemonic counts per step."""
    blocks = [b for b in res["blocks"] if tails or not b["tail"]] or res["blocks"]
    head = (f"{res['kernel']} causal={res['causal']} order={res['order']} {res['dtype']} H={res['H']} "
            f"D={res['D']} config={json.dumps(res['config'], sort_keys=True)}\n"
            f"target {res['target']} (LLVM {res['llvm']}, TVM {res['tvm']})")
    lines = [head, ""]
    cols = ["block", "loops", "steps", "lanes", "bits"] + list(GROUP_ORDER) + ["total", "folded loads", "spill ld/st"]
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "---|" * len(cols))
    for b in blocks:
        ps = b["per_step"]
        row = [b["block"], ",".join(b["loops"]), str(b["steps"]), str(b["lanes_per_step"]), str(b["vector_bits"])]
        row += [_fmt(ps[g]) for g in GROUP_ORDER] + [_fmt(ps["total"]), _fmt(b["folded_loads_per_step"]),
                                                     f"{_fmt(b['spill_loads_per_step'])}/{_fmt(b['spill_stores_per_step'])}"]
        lines.append("| " + " | ".join(row) + " |")
    for b in blocks:
        if b.get("matches_tail") is False:
            lines.append(f"warning: {b['block']} and its tail differ in arithmetic per step: LLVM unrolled one "
                         f"of them itself, so its steps per iteration are not the schedule's")
    lines.append("")
    lines.append("Per step (one vector of `lanes` channels at one time position); x 16 / lanes for 16 "
                 "channel-steps. 512 bits: zmm, 16 float32 lanes; 256: ymm, a 16-lane step is two halves.")
    lines.append("")
    lines.append("| arithmetic class | " + " | ".join(b["block"] for b in blocks) + " |")
    lines.append("|---|" + "---|" * len(blocks))
    for c in ARITH:
        if any(c in b["arith_per_step"] for b in blocks):
            lines.append(f"| {c} | " + " | ".join(_fmt(b["arith_per_step"].get(c, 0)) for b in blocks) + " |")
    lines.append("")
    keys: dict[str, str] = {}
    for b in blocks:
        for k, v in b["mnemonics_per_step"].items():
            keys.setdefault(k, v["class"])
    lines.append("| mnemonic | class | " + " | ".join(b["block"] for b in blocks) + " |")
    lines.append("|---|---|" + "---|" * len(blocks))
    order = sorted(keys, key=lambda k: (GROUP_ORDER.index(GROUPS[keys[k]]),
                                        ARITH.index(keys[k]) if keys[k] in ARITH else 0, k))
    for k in order:
        vals = [_fmt(b["mnemonics_per_step"].get(k, {"per_step": 0})["per_step"]) for b in blocks]
        lines.append(f"| {k} | {keys[k]} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m schedules.tvm.disasm", description=__doc__.split("\n")[0])
    p.add_argument("--kernel", default="forward", choices=("forward", "backward", "step"))
    p.add_argument("--order", type=int, default=6)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--non-causal", action="store_true")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--config", type=json.loads, default=None,
                   help='a CPU config as JSON, e.g. \'{"loop": "d_t", "d_tile": 16, "t_unroll": 4}\'')
    p.add_argument("--t-unroll", type=int, default=None, help="the default config with this t_unroll")
    p.add_argument("--mcpu", default=None, help="an LLVM CPU to build for (default: this one)")
    p.add_argument("--tails", action="store_true", help="show the tail blocks too")
    p.add_argument("--json", metavar="PATH", help="write the full result as JSON ('-' for stdout)")
    p.add_argument("--asm", metavar="PATH", help="also write the assembly")
    a = p.parse_args(argv)
    from ea_ops.backends.tvm import schedule

    cfg = a.config
    if a.t_unroll is not None:
        cfg = {**(cfg or schedule.default_cpu_config(a.kernel, a.heads, a.dim)), "t_unroll": a.t_unroll}
    causal = not a.non_causal
    res, asm = _count(a.kernel, a.order, a.dtype, causal, a.heads, a.dim, cfg, a.mcpu)
    if a.asm:
        with open(a.asm, "w", encoding="utf-8") as fh:
            fh.write(asm)
    if a.json == "-":
        json.dump(res, sys.stdout, indent=1)
        print()
        return 0
    if a.json:
        with open(a.json, "w", encoding="utf-8") as fh:
            json.dump(res, fh, indent=1)
    print(table(res, a.tails))
    return 0


if __name__ == "__main__":
    sys.exit(main())
