#!/usr/bin/env bash
# GPU check of the Triton backend (and of the TVM backend on CUDA), sized for a short GPU slot: at most 7 minutes
# in all (the per-step limits, their kill-after grace and the set-up; checked below), in seven steps:
#   env    python3 with the preinstalled torch + triton (nothing is downloaded), ea-ops from this checkout
#   warm   the JIT's builds the tests need, made in parallel (one process per core) into Triton's on-disk cache
#          (python3 -m schedules.triton.warm: about 146 builds of 0.5-9 s each, which the tests would otherwise
#          compile one after another)
#   tests  the GPU-marked tests (pytest -m gpu) against the torch reference, but the TVM ones
#   tvm    the TVM backend's GPU tests (tests/ea_ops/test_tvm_cuda_gpu.py: kernels built for this GPU, a pack run
#          without the compiler, TVM against Triton); skipped by pytest where TVM is not installed
#   timings  per-pass times of the default configuration at B = 1 and 8, and the decode step in a CUDA graph
#          (scripts/gpu_timings.py; untuned, before the tuning run)
#   tune   a small tuning run (ea-ops tune --backend triton --workloads small); the bench reads its records
#   bench  ea-ops bench --workload gpu-goal: the correctness gate, then the H200 goal shapes against the untuned
#          config, eager PyTorch, torch.compile, SDPA, FlashAttention if installed and a copy of the same bytes
# Results under --out DIR (else $OUT, else ./gpu_check_out), 8 files:
#   summary.json                  env, limits, each step's rc and seconds, test counts, the gate, the goals;
#                                 rewritten as each step ends
#   logs/{env,tests,timings,tune,bench}.log
#   bench-gpu-goal.json           the bench document (rewritten after each workload)
#   artifacts.tar.gz              records/ (tuned), tests.xml, warm.log, warm.json, tvm.log and tvm-tests.xml (the
#                                 warm and tvm steps', kept here to stay within 8 files), timings.json, tune.json,
#                                 the bench's table and plot
# Exit status: 0 every step passed; 1 a correctness failure (the bench's gate, a GPU test); 2 no usable
# environment; 3 a step timed out or failed otherwise.
# --dry-run (no GPU needed): runs the steps that need none (env, the list of builds to warm, the tests'
# collection, the timings' and the bench's plans), logs the others as skipped, and writes the same files.
# Usage: scripts/gpu_check.sh [--out DIR] [--dry-run]
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

OUT_DIR="${OUT:-$ROOT/gpu_check_out}"
DRY_RUN=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT_DIR="$2"; shift 2 ;;
    --out=*) OUT_DIR="${1#--out=}"; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    *) echo "gpu_check.sh: unknown argument $1 (usage: scripts/gpu_check.sh [--out DIR] [--dry-run])" >&2; exit 2 ;;
  esac
done
export DRY_RUN
PY="${PYTHON:-python3}"

# Limits in seconds. Steps + their kill-after grace + SLACK (the summaries and the tarball) <= TOTAL.
T_ENV="${T_ENV:-25}"
T_WARM="${T_WARM:-40}"       # 146 builds: 136 of them took 252 s of compiling (128 s in 2 processes, 2-core EPYC)
T_TESTS="${T_TESTS:-100}"    # the builds warm made are loaded from disk; a build it missed is compiled here
T_TVM="${T_TVM:-50}"         # about 10 TVM CUDA builds (1-2 s each) and a small pack built and run in a child
T_TIMINGS="${T_TIMINGS:-30}" # the JIT builds are on disk by then (Triton's cache)
T_TUNE="${T_TUNE:-40}"
TUNE_BUDGET="${TUNE_BUDGET:-22}"
T_BENCH="${T_BENCH:-80}"     # torch.compile comes last in the preset: a time-out there keeps the rest
KILL_AFTER=5
SLACK=20
TOTAL=420
SUM=$(( T_ENV + T_WARM + T_TESTS + T_TVM + T_TIMINGS + T_TUNE + T_BENCH + 7 * KILL_AFTER + SLACK ))
if [ "$SUM" -gt "$TOTAL" ]; then
  echo "gpu_check.sh: the limits add up to ${SUM}s, over ${TOTAL}s (T_ENV, T_WARM, T_TESTS, T_TVM, T_TIMINGS, T_TUNE, T_BENCH)" >&2
  exit 2
fi

mkdir -p "$OUT_DIR/logs" || exit 2
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
LOGS="$OUT_DIR/logs"
WORK="$(mktemp -d)"  # scratch: what is packed into artifacts.tar.gz, the step records
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/pack/records"
printf '{"env": %d, "warm": %d, "tests": %d, "tvm": %d, "timings": %d, "tune": %d, "tune_budget": %d, "bench": %d, "kill_after": %d, "total": %d}\n' \
  "$T_ENV" "$T_WARM" "$T_TESTS" "$T_TVM" "$T_TIMINGS" "$T_TUNE" "$TUNE_BUDGET" "$T_BENCH" "$KILL_AFTER" "$TOTAL" > "$WORK/limits.json"

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export EA_OPS_CACHE_DIR="$WORK/pack/records"     # the tuned records land here, and the bench reads them
export TRITON_DEFAULT_FP_FUSION=1                # Triton >= 3.9 warns without it; the JIT default through 3.9
unset TRITON_INTERPRET

log() { echo "[gpu_check $(date +%H:%M:%S)] $*"; }
summarize() { "$PY" scripts/gpu_check_summary.py "$WORK" "$OUT_DIR" "$@"; }

# record NAME RC SECONDS [WHY]: one line of steps.jsonl (RC null: skipped), then summary.json again
record() {
  local timed_out=false
  { [ "$2" = 124 ] || [ "$2" = 137 ]; } && timed_out=true
  printf '{"step": "%s", "rc": %s, "seconds": %d, "timed_out": %s, "skipped": %s}\n' "$1" "$2" "$3" "$timed_out" \
    "$([ -n "${4:-}" ] && printf '"%s"' "$4" || echo null)" >> "$WORK/steps.jsonl"
  summarize
}

# step NAME LIMIT CMD...: run under a hard limit, output to logs/NAME.log (or to $STEP_LOG)
step() {
  local name="$1" limit="$2"; shift 2
  local t0 rc out="${STEP_LOG:-$LOGS/$name.log}"
  t0=$(date +%s)
  log "$name (limit ${limit}s): $*"
  timeout --kill-after="$KILL_AFTER" "$limit" "$@" > "$out" 2>&1; rc=$?
  record "$name" "$rc" "$(( $(date +%s) - t0 ))"
  tail -n 5 "$out"
  return "$rc"
}

# skip NAME WHY CMD...: what a dry run does not run
skip() {
  local name="$1" why="$2"; shift 2
  log "$name: skipped ($why): $*"
  echo "skipped ($why): $*" > "${STEP_LOG:-$LOGS/$name.log}"
  record "$name" null 0 "$why"
}

finish() {
  for f in bench-gpu-goal.png bench-gpu-goal.txt; do [ -f "$OUT_DIR/$f" ] && mv "$OUT_DIR/$f" "$WORK/pack/"; done
  find "$OUT_DIR" -maxdepth 1 -name '.*.tmp' -delete  # a write cut short by a time limit left its temporary
  tar -czf "$OUT_DIR/artifacts.tar.gz" -C "$WORK/pack" .
  summarize --final
  local rc=$?
  log "done (exit status $rc): $OUT_DIR/summary.json"
  exit "$rc"
}

# ---- env: versions, the GPU, and whether the Triton backend can run (nothing is downloaded)
step env "$T_ENV" "$PY" - "$WORK/env.json" <<'EOF' || { log "no usable environment: stop"; finish; }
import json, os, platform, subprocess, sys
import torch, triton
import ea_ops
env = {"python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
       "ea_ops": ea_ops.__version__, "cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda,
       "backends": ea_ops.dispatch.available()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    env.update(gpu=p.name, capability=f"{p.major}.{p.minor}", memory_gib=round(p.total_memory / 2**30, 1))
try:
    env["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem",
                                        "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
except Exception as exc:
    env["nvidia_smi"] = repr(exc)
for mod in ("pytest", "hypothesis", "flash_attn", "tqdm"):
    try:
        env[mod] = __import__(mod).__version__
    except Exception:
        env[mod] = None
json.dump(env, open(sys.argv[1], "w"), indent=1)
print(json.dumps(env, indent=1))
if os.environ.get("DRY_RUN") != "1":
    if not env["cuda_available"]:
        sys.exit("no CUDA device (--dry-run runs what needs none)")
    if env["backends"].get("triton") is not None:
        sys.exit(f"the Triton backend cannot run here: {env['backends']['triton']}")
EOF

# ---- warm: the tests' JIT builds, in parallel, into Triton's cache (a dry run lists them); log and JSON into the
# tarball. A failed build is compiled again by the test that needs it, so the tests step runs either way.
WARM=("$PY" -m schedules.triton.warm --preset gpu-tests --jobs "$(nproc)" --no-progress --json "$WORK/pack/warm.json")
[ "$DRY_RUN" = 1 ] && WARM+=(--dry-run)
STEP_LOG="$WORK/pack/warm.log" step warm "$T_WARM" "${WARM[@]}"

# ---- tests: the GPU-marked tests (a dry run collects them), but the tvm step's
TVM_GPU_TESTS=tests/ea_ops/test_tvm_cuda_gpu.py
mapfile -t GPU_FILES < <(grep -rlE "mark\.gpu" tests --include='test_*.py' | grep -vxF "$TVM_GPU_TESTS" | sort)
if ! "$PY" -c "import pytest, hypothesis" 2>/dev/null; then
  skip tests "pytest or hypothesis missing" "$PY" -m pytest -m gpu "${GPU_FILES[@]}"
elif [ "$DRY_RUN" = 1 ]; then
  step tests "$T_TESTS" "$PY" -m pytest -q -m gpu -p no:cacheprovider --collect-only "${GPU_FILES[@]}"
else
  step tests "$T_TESTS" "$PY" -m pytest -q -m gpu -p no:cacheprovider "${GPU_FILES[@]}" \
    --junitxml="$WORK/pack/tests.xml"
fi

# ---- tvm: the TVM backend's GPU tests; log and junit XML into the tarball (a dry run collects them)
TVM_TESTS=("$PY" -m pytest -q -rs -m gpu -p no:cacheprovider "$TVM_GPU_TESTS")
STEP_LOG="$WORK/pack/tvm.log"
if ! "$PY" -c "import pytest, hypothesis" 2>/dev/null; then
  skip tvm "pytest or hypothesis missing" "${TVM_TESTS[@]}"
elif [ "$DRY_RUN" = 1 ]; then
  step tvm "$T_TVM" "${TVM_TESTS[@]}" --collect-only
else
  step tvm "$T_TVM" "${TVM_TESTS[@]}" --junitxml="$WORK/pack/tvm-tests.xml"
fi
unset STEP_LOG

# ---- timings: per pass at B = 1 and 8, the decode step in a CUDA graph (a dry run writes the plan)
TIMINGS=("$PY" scripts/gpu_timings.py "$WORK/pack/timings.json")
[ "$DRY_RUN" = 1 ] && TIMINGS+=(--dry-run)
step timings "$T_TIMINGS" "${TIMINGS[@]}"

# ---- tune: a small run; records to $EA_OPS_CACHE_DIR/triton/<fingerprint>/records.json, its JSON to tune.json
TUNE=(sh -c '"$0" -m ea_ops.cli tune --backend triton --workloads small --orders 6 --time-budget "$1" --json > "$2"'
      "$PY" "$TUNE_BUDGET" "$WORK/pack/tune.json")
if [ "$DRY_RUN" = 1 ]; then
  skip tune "needs a GPU" "${TUNE[@]}"
else
  step tune "$T_TUNE" "${TUNE[@]}"
fi

# ---- bench: the gate, then the goal shapes (the document is rewritten after each workload: a time-out keeps
# what finished); its JSON on stdout is the document in --out again, so only the messages go to the log
BENCH=("$PY" -m ea_ops.cli bench --workload gpu-goal --no-progress --json --out "$OUT_DIR")
[ "$DRY_RUN" = 1 ] && BENCH+=(--dry-run)
step bench "$T_BENCH" sh -c '"$@" > /dev/null' sh "${BENCH[@]}"

finish
