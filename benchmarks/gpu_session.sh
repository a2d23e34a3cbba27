#!/usr/bin/env bash
# One GPU session, from a copy of this tree, in one command (see docs/gpu_session.md):
#
#   OUT=/some/folder bash benchmarks/gpu_session.sh            # on the GPU machine: about 8 minutes at most
#   DRY_RUN=1 OUT=/tmp/x bash benchmarks/gpu_session.sh        # every step on CPU with tiny shapes (minutes)
#
# Steps, in order, each under its own `timeout` and logged with timestamps to $OUT/session.log; a failing
# or timed-out step is recorded and the next one runs:
#   1. env       nvidia-smi, compilers, Python package versions, flash-attn 4 probe     -> env.txt
#   2. install   pip install --no-build-isolation --no-deps -e . (CUDA kernels for sm_90) -> install.log
#   3. tests     the tests that need CUDA (DRY_RUN: a small CPU subset)                  -> tests.log
#   4. selfcheck the backend registry's self-check of each fast backend                  -> tests.log
#   5. grid      benchmarks/bench_gpu.py --plan session: smoke 135M, Llama-2-7B headline, B 8, B 32,
#                k 40, OPT-1.3B; each row written when measured                          -> bench.log,
#                                                                                            bench_gpu.json/.md
# At most 8 files land in $OUT. Exit status 0 when every step passed, 1 otherwise.
#
# Variables: OUT (required), DRY_RUN (0/1), PYTHON (default python3), SESSION_BUDGET_S (total wall-clock
# budget; default 470 on GPU, 360 for DRY_RUN, which takes about 2 minutes on 2 idle cores), REPEATS (timed runs per point at most; default 3, DRY_RUN 1),
# POINT_TARGET_S (no further timed run of a point starts after this many seconds; default 8, DRY_RUN 2),
# SECTIONS (comma-separated grid sections to run, default all: smoke,headline,batch-8,batch-32,k-40,opt-1.3b),
# SKIP_TESTS=1 (leave out the tests and the self-check, e.g. for a second call that runs later sections).
set -u -o pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT" || exit 2
: "${OUT:?set OUT to the folder for the logs and result files}"
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
DRY_RUN=${DRY_RUN:-0}
PYTHON=${PYTHON:-python3}
# POINT_TARGET_S: no further timed run of a point starts after this long (one at least, after the warm-up)
if [ "$DRY_RUN" = 1 ]; then
    BUDGET_S=${SESSION_BUDGET_S:-360}; REPEATS=${REPEATS:-1}; POINT_TARGET_S=${POINT_TARGET_S:-2}; DRY=(--dry-run-cpu)
else
    BUDGET_S=${SESSION_BUDGET_S:-470}; REPEATS=${REPEATS:-3}; POINT_TARGET_S=${POINT_TARGET_S:-8}; DRY=()
fi
START=$(date +%s)
LOG=$OUT/session.log
# the tree's own code first (also when the install step failed or was cut short)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export ARGS_FAST_CUDA_ARCHS=${ARGS_FAST_CUDA_ARCHS:-90}
if [ "$DRY_RUN" = 1 ]; then
    export TRITON_INTERPRET=1 CUDA_VISIBLE_DEVICES=""   # CPU only, Triton under its interpreter
fi

log() { echo "$(date -u +%FT%TZ) [$(( $(date +%s) - START )) s] $*" | tee -a "$LOG"; }
left() { echo $(( START + BUDGET_S - $(date +%s) )); }

FAILED=()
# step NAME CAP_S FILE CMD...: CMD under `timeout` (CAP_S, or less when the budget is shorter), its output
# appended to FILE; records the outcome and always returns 0, so the later steps run.
step() {
    local name=$1 cap=$2 file=$3 rc
    shift 3
    local room=$(( $(left) - 5 ))
    (( cap > room )) && cap=$room
    if (( cap < 5 )); then
        log "SKIP  $name: the session budget is spent"
        FAILED+=("$name (not run)")
        return 0
    fi
    log "START $name (limit $cap s) -> $(basename "$file")"
    echo "===== $(date -u +%FT%TZ) $name: $*" >>"$file"
    timeout -k 10 "$cap" "$@" >>"$file" 2>&1
    rc=$?
    if (( rc == 0 )); then
        log "OK    $name"
    else
        log "FAIL  $name (exit $rc$( (( rc == 124 || rc == 137 )) && echo ", stopped at its $cap s limit"))"
        FAILED+=("$name")
    fi
    return 0
}

env_report() {
    echo "date: $(date -u +%FT%TZ)"; echo "DRY_RUN=$DRY_RUN PYTHON=$PYTHON budget ${BUDGET_S} s"
    uname -a; echo "cpus: $(nproc)"; free -g 2>/dev/null | head -2; df -h "$ROOT" 2>/dev/null | tail -1
    echo "--- nvidia-smi"
    if command -v nvidia-smi >/dev/null; then
        nvidia-smi
        nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem,clocks.max.sm \
            --format=csv 2>&1
    else
        echo "nvidia-smi: not found"
    fi
    echo "--- tools"
    (command -v nvcc >/dev/null && nvcc --version | tail -2) || echo "nvcc: not found"
    (command -v cmake >/dev/null && cmake --version | head -1) || echo "cmake: not found"
    (command -v ninja >/dev/null && echo "ninja $(ninja --version)") || echo "ninja: not found"
    echo "--- python"
    "$PYTHON" - <<'EOF'
import importlib, platform, sys
print("python", platform.python_version(), sys.executable)
for name in ("torch", "triton", "transformers", "accelerate", "numpy", "setuptools", "pytest"):
    try:
        print(f"{name:14s}", getattr(importlib.import_module(name), "__version__", "?"))
    except Exception as exc:
        print(f"{name:14s} not importable: {exc}")
import torch
print("torch cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device {p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, "
          f"{p.total_memory / 2 ** 30:.1f} GiB, L2 {getattr(p, 'L2_cache_size', 0) / 2 ** 20:.0f} MiB")
# flash-attn 4 (CuTe DSL): optional, not wired into the grid (see docs/gpu_session.md)
try:
    import flash_attn.cute as fa4  # noqa: F401
    print("flash-attn 4: importable (not used by this grid: the engines' attention op lives in the package)")
except Exception as exc:
    print(f"flash-attn 4: not installed ({type(exc).__name__}); skipped: its CUTLASS DSL runtime wheel (about 92 MB) "
          "exceed what travels to the machine (64 MiB), which cannot download")
EOF
    echo "--- package"
    "$PYTHON" -c "import args_fast, args_fast.csrc_ops as c; print('args_fast', args_fast.__version__, \
args_fast.__file__); print('csrc extension:', c.available(), 'cuda kernels:', c.cuda_available(), \
c.unavailable_reason())" 2>&1
    (git -C "$ROOT" rev-parse HEAD 2>/dev/null && git -C "$ROOT" status --short 2>/dev/null | head -20) \
        || echo "git: no repository here"
}

install() {
    if [ "$DRY_RUN" = 1 ]; then
        echo "DRY_RUN: pip install skipped (the package must already be importable)"
    else
        echo "ARGS_FAST_CUDA_ARCHS=$ARGS_FAST_CUDA_ARCHS"
        "$PYTHON" -m pip install --no-build-isolation --no-deps --no-index --root-user-action=ignore -e . \
            || return $?
    fi
    "$PYTHON" -c "import args_fast.csrc_ops as c; print('csrc extension:', c.available(), 'cuda kernels:', \
c.cuda_available(), c.unavailable_reason())"
}

gpu_tests() {
    if [ "$DRY_RUN" = 1 ]; then   # a small CPU subset: the registry's table, its reasons, auto's fallback
        "$PYTHON" -m pytest -q -x -p no:cacheprovider tests/test_backend_registry.py \
            -k "every_backend or explicit or raises"
    else   # the tests that need CUDA: csrc kernels, CUDA-graph replay, the registry's auto on the GPU
        "$PYTHON" -m pytest -q -p no:cacheprovider -k "cuda or auto" \
            tests/test_csrc_ops.py tests/test_static_engine.py tests/test_backend_registry.py
    fi
}

summary() {
    "$PYTHON" - "$OUT/bench_gpu.json" <<'EOF'
import json, sys
try:
    data = json.load(open(sys.argv[1]))
except Exception as exc:
    print(f"no benchmark results ({exc})")
    sys.exit(0)
meta, rows = data["meta"], data["results"]
print(f"{meta['device']}, {meta['dtype']}, copy {meta['copy_bandwidth_GBps']:.0f} GB/s; status: {meta['status']}")
print(f"{'section':9s} {'model':13s} {'backend':21s} {'B':>3s} {'P':>5s} {'k':>3s} {'ms/step':>9s} {'tok/s':>9s} "
      f"{'x floor':>8s} {'peak GiB':>8s}  note")
f = lambda v, spec: format(v, spec) if v is not None else ""
for r in rows:
    print(f"{r.get('section', ''):9s} {r['model']:13s} {r['backend']:21s} {r['batch']:3d} {r['prompt']:5d} "
          f"{f(r['k'], '3d'):>3s} {f(r.get('ms_per_step'), '9.2f'):>9s} {f(r.get('tokens_per_s'), '9.1f'):>9s} "
          f"{f(r.get('x_floor'), '8.2f'):>8s} {f(r.get('peak_GiB'), '8.1f'):>8s}  {r.get('note', '')[:70]}")
EOF
}

# `timeout` runs programs, not shell functions: the steps below run in `bash -c` with these exported
export ROOT OUT DRY_RUN PYTHON BUDGET_S
export -f env_report install gpu_tests

log "session: DRY_RUN=$DRY_RUN, budget $BUDGET_S s, OUT=$OUT, PYTHON=$PYTHON"
step env 30 "$OUT/env.txt" bash -c env_report
step install 200 "$OUT/install.log" bash -c install
if [ "${SKIP_TESTS:-0}" = 1 ]; then
    log "SKIP  tests and selfcheck (SKIP_TESTS=1)"
else
    # caps: on GPU short, for the grid's sake; on a shared CPU (DRY_RUN) loose, since load stretches them
    step tests "$([ "$DRY_RUN" = 1 ] && echo 150 || echo 75)" "$OUT/tests.log" bash -c gpu_tests
    step selfcheck "$([ "$DRY_RUN" = 1 ] && echo 120 || echo 60)" "$OUT/tests.log" "$PYTHON" benchmarks/bench_gpu.py --self-check "${DRY[@]}"
fi
# the grid stops launching points 20 s before its own hard limit, so it can write its last rows
GRID_CAP=$(( $(left) - 5 ))
step grid "$GRID_CAP" "$OUT/bench.log" "$PYTHON" benchmarks/bench_gpu.py --plan session --out "$OUT" \
    --repeats "$REPEATS" --point-target-s "$POINT_TARGET_S" --time-budget-s $(( GRID_CAP > 40 ? GRID_CAP - 20 : GRID_CAP / 2 )) \
    ${SECTIONS:+--sections "$SECTIONS"} "${DRY[@]}"
rm -f "$OUT"/*.tmp   # a write cut by the hard limit (the result files are replaced whole)

if (( ${#FAILED[@]} )); then
    log "done in $(( $(date +%s) - START )) s; failed: ${FAILED[*]}"
else
    log "done in $(( $(date +%s) - START )) s; every step passed"
fi
echo
echo "=== results ($OUT/bench_gpu.md has the full table) ==="
summary 2>&1 | tee -a "$LOG"
(( ${#FAILED[@]} == 0 ))
