#!/usr/bin/env bash
# GPU check of the Triton backend, in one go and under 10 minutes (hard per-step time limits below):
#   0. environment: the preinstalled torch + triton (no network: nothing is downloaded), ea-ops from this checkout
#   1. the GPU-marked tests (pytest -m gpu) against the torch reference
#   2. a small tuning run (ea-ops tune --backend triton --workloads small), records kept under the output folder
#   3. the benchmark at the issue's H200 goal shapes (scripts/gpu_bench.py): eager PyTorch, torch.compile, SDPA,
#      FlashAttention if installed, and a device-to-device copy of the same bytes
# Results: JSON (and logs) under --out DIR, else $OUT, else ./gpu_check_out.   Usage: scripts/gpu_check.sh [--out DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

OUT_DIR="${OUT:-$ROOT/gpu_check_out}"
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT_DIR="$2"; shift 2 ;;
    --out=*) OUT_DIR="${1#--out=}"; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    *) echo "gpu_check.sh: unknown argument $1 (usage: scripts/gpu_check.sh [--out DIR] [--dry-run])" >&2; exit 2 ;;
  esac
done
export DRY_RUN="${DRY_RUN:-0}"
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
PY="${PYTHON:-python}"
command -v "$PY" >/dev/null 2>&1 || PY=python3

# Limits in seconds (sum + set-up stays under 600).
T_TESTS="${T_TESTS:-230}"
T_TUNE="${T_TUNE:-110}"
TUNE_BUDGET="${TUNE_BUDGET:-80}"
T_BENCH="${T_BENCH:-220}"

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export EA_OPS_CACHE_DIR="$OUT_DIR/ea_ops_cache"   # the tuned records land here, and the benchmark reads them
export TRITON_DEFAULT_FP_FUSION=1                 # Triton >= 3.9 warns without it; the JIT default through 3.9
unset TRITON_INTERPRET

STEPS_JSON="$OUT_DIR/steps.jsonl"
: > "$STEPS_JSON"
log() { echo "[gpu_check $(date +%H:%M:%S)] $*"; }

# step NAME LIMIT CMD...: run with a hard limit, log to OUT/NAME.log, record rc and seconds
step() {
  local name="$1" limit="$2"; shift 2
  local t0 rc
  t0=$(date +%s)
  log "$name (limit ${limit}s): $*"
  if [ "$DRY_RUN" = 1 ]; then
    echo "dry run: $*" > "$OUT_DIR/$name.log"; rc=0
  else
    timeout --kill-after=15 "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1; rc=$?
  fi
  printf '{"step": "%s", "rc": %d, "seconds": %d, "timed_out": %s}\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" \
    "$([ "$rc" = 124 ] || [ "$rc" = 137 ] && echo true || echo false)" >> "$STEPS_JSON"
  tail -n 5 "$OUT_DIR/$name.log"
  return 0
}

# ---- 0. environment (nothing is downloaded: the GPU machine reaches no network)
log "environment -> $OUT_DIR/env.json"
"$PY" - "$OUT_DIR/env.json" <<'EOF' || { log "torch/triton missing or broken: stop"; exit 1; }
import json, os, platform, subprocess, sys
import torch, triton
env = {"python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
       "cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda}
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
if not env["cuda_available"] and os.environ.get("DRY_RUN") != "1":
    sys.exit("no CUDA device")
EOF
# Register the package (entry point) without touching dependencies; PYTHONPATH covers a failure.
if [ "$DRY_RUN" != 1 ]; then
  "$PY" -m pip install -q -e . --no-deps --no-build-isolation > "$OUT_DIR/install.log" 2>&1 \
    || log "pip install -e . failed (see install.log); using PYTHONPATH=$ROOT"
fi
"$PY" -c "import ea_ops, ea_ops.triton.backend as b; assert b.unavailable_reason() is None" \
  || { log "ea_ops does not import: stop"; exit 1; }

# ---- 1. GPU-marked tests
HAVE_PYTEST=0
"$PY" -c "import pytest, hypothesis" 2>/dev/null && HAVE_PYTEST=1
if [ "$HAVE_PYTEST" = 1 ]; then
  mapfile -t GPU_FILES < <(grep -rlE "mark\.gpu" tests --include='test_*.py' | sort)
  step tests "$T_TESTS" "$PY" -m pytest -q -m gpu -p no:cacheprovider "${GPU_FILES[@]}" \
    --junitxml="$OUT_DIR/tests.xml"
else
  log "pytest/hypothesis not installed here (no network): GPU tests skipped; the benchmark still checks outputs"
  printf '{"step": "tests", "rc": null, "skipped": "pytest or hypothesis missing"}\n' >> "$STEPS_JSON"
fi

# ---- 2. a small tuning run (records under OUT/ea_ops_cache/triton/<fingerprint>/records.json)
# (stdout, the JSON summary, to tune.json; the progress bar and messages to tune.log)
step tune "$T_TUNE" sh -c '"$0" -m ea_ops.cli tune --backend triton --workloads small --orders 6 \
  --time-budget "$1" --json > "$2"' "$PY" "$TUNE_BUDGET" "$OUT_DIR/tune.json"

# ---- 3. benchmark (bench.json / bench.md; written after every section, so a time-out keeps what finished)
step bench "$T_BENCH" "$PY" scripts/gpu_bench.py --out "$OUT_DIR"

# ---- summary
"$PY" - "$OUT_DIR" <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
def load(name):
    try:
        return json.loads((out / name).read_text())
    except Exception:
        return None
steps = [json.loads(l) for l in (out / "steps.jsonl").read_text().splitlines() if l.strip()]
bench = load("bench.json") or {}
summary = {"env": load("env.json"), "steps": steps, "bench_summary": bench.get("summary"),
           "bench_errors": bench.get("errors"), "tune": load("tune.json")}
(out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
print(json.dumps({"steps": steps, "bench_summary": bench.get("summary")}, indent=1))
EOF
log "done: $OUT_DIR/summary.json"
