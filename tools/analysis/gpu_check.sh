#!/usr/bin/env bash
# The GPU check: everything mmdtl can only verify on a CUDA GPU, in one
# command and one report (about 10 min on one H100/H200 once the pip and mmcv
# wheel caches are warm):
#
#   1. install into its own venv (default .venv-cuda, so that a CPU-built .venv,
#      whose mmcv has no CUDA ops, is never reused): tools/install.sh builds
#      mmcv with CUDA ops once and caches the wheel (torch-<version>-cuda);
#   2. the CUDA tests (tests/test_cuda: an AMP training step through the
#      Runner, half-stored frozen weights, the device prefix cache, one-process
#      NCCL DDP), which are skipped on a machine without a GPU;
#   3. tools/analysis/benchmark.py at batch 32 on the GPU (fp16 AMP; peak =
#      torch.cuda.max_memory_allocated): ViT-B with every method, Swin-B
#      with full fine-tuning and the DTL+ variants, DINOv2-g (1.1B parameters)
#      with full fine-tuning, DTL+ and DTL+ with suffix checkpointing and
#      half-stored weights;
#   4. tools/analysis/memory_scaling.py's estimates of the same steps, with
#      the measured peaks next to them.
#
# Usage: bash tools/analysis/gpu_check.sh [WORK_DIR]   (default work_dirs/gpu_check)
# Writes WORK_DIR/report.md (and the tools' own tables beside it); exits
# non-zero if a step failed, after writing the report.
#
# The lent GPU machine has no network and no time to compile mmcv's ops; two
# modes serve it (docs/gpu_check.md):
#
#   bash tools/analysis/gpu_check.sh --prepare-wheels DIR [--python-version 3.12]
#       here, with PyPI: the wheel folder (<= 60 MiB) of mmdtl's pure-Python
#       dependencies, mmcv 2.1.0 built without ops among them
#       (tools/misc/prepare_gpu_wheels.py, run by ${PYTHON:-.venv/bin/python});
#   bash tools/analysis/gpu_check.sh --offline [WORK_DIR] [--wheels DIR] [...]
#       there: installs from the folder, then the CUDA tests, ViT-B and
#       DINOv2-g benchmarks and estimates within 8 minutes, one report and a
#       CSV (tools/analysis/gpu_check_offline.py, run by ${PYTHON:-python3},
#       the machine's own interpreter and torch); without CUDA, a CPU
#       rehearsal at small settings whose report says no GPU was available.
set -uo pipefail
cd "$(dirname "$0")/../.."

case "${1:-}" in
    --prepare-wheels)
        shift
        [ $# -ge 1 ] || { echo "usage: $0 --prepare-wheels DIR [--python-version 3.N]" >&2; exit 2; }
        if [ -z "${PYTHON:-}" ]; then
            PYTHON=python3
            [ -x .venv/bin/python ] && PYTHON=.venv/bin/python
        fi
        exec "$PYTHON" tools/misc/prepare_gpu_wheels.py "$@" ;;
    --offline)
        shift
        exec "${PYTHON:-python3}" tools/analysis/gpu_check_offline.py "$@" ;;
esac

OUT=${1:-work_dirs/gpu_check}
export VENV=${VENV:-.venv-cuda}
PY=$VENV/bin/python
mkdir -p "$OUT"
REPORT=$OUT/report.md
LOG=$OUT/gpu_check.log
: > "$LOG"
STATUS=0
declare -a SUMMARY

step() {  # step NAME TIMEOUT_S COMMAND...: run, log, record pass/fail and time
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    echo "[gpu_check] $name: $*" | tee -a "$LOG"
    timeout "$limit" "$@" >> "$LOG" 2>&1
    local rc=$?
    local took=$((SECONDS - start))
    if [ $rc -eq 0 ]; then
        SUMMARY+=("| $name | ok | ${took} s |")
    else
        SUMMARY+=("| $name | FAILED (exit $rc) | ${took} s |")
        STATUS=1
    fi
    echo "[gpu_check] $name: exit $rc after ${took} s" | tee -a "$LOG"
}

BENCH="tools/analysis/benchmark.py --device cuda --batch-size 32 --warmup 1 --repeats 3"
ALL_METHODS="full lora dtl dtl+ dtl+ckpt dtl_half dtl+_half dtl+ckpt_half"
SWIN_METHODS="full dtl+ dtl+ckpt dtl+_half dtl+ckpt_half"
GIANT_METHODS="full dtl+ dtl+ckpt_half"

step install 900 bash tools/install.sh
step "cuda tests" 600 bash -c "set -o pipefail; $PY -m pytest -q -rA tests/test_cuda \
    | tee $OUT/cuda_tests.log"
step "benchmark vit-b" 900 "$PY" $BENCH --arch vit-b --methods $ALL_METHODS \
    --work-dir "$OUT/benchmark_vit-b"
step "benchmark swin-b" 900 "$PY" $BENCH --arch swin-b --methods $SWIN_METHODS \
    --work-dir "$OUT/benchmark_swin-b"
step "benchmark vit-dinov2-g" 900 "$PY" $BENCH --arch vit-dinov2-g --methods $GIANT_METHODS \
    --work-dir "$OUT/benchmark_vit-dinov2-g"
MEASURED=()
for arch in vit-b swin-b vit-dinov2-g; do
    [ -f "$OUT/benchmark_$arch/benchmark.csv" ] && MEASURED+=("$arch=$OUT/benchmark_$arch/benchmark.csv")
done
step "estimates vs measured" 600 "$PY" tools/analysis/memory_scaling.py --validate \
    --archs vit-b swin-b vit-dinov2-g --methods $ALL_METHODS --measured "${MEASURED[@]}" \
    --work-dir "$OUT/memory_scaling"

{
    echo "# mmdtl GPU check"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo
    echo '```'
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
    "$PY" - <<'EOF' 2>&1
import torch
print(f'torch {torch.__version__}, CUDA {torch.version.cuda}, '
      f'cuDNN {torch.backends.cudnn.version()}, GPU available: {torch.cuda.is_available()}')
try:
    from mmcv.ops import get_compiling_cuda_version
    print(f'mmcv ops compiled with CUDA: {get_compiling_cuda_version()}')
except Exception as e:  # the report says why instead of failing
    print(f'mmcv ops: {type(e).__name__}: {e}')
EOF
    echo '```'
    echo
    echo "| step | result | time |"
    echo "|---|---|---|"
    printf '%s\n' "${SUMMARY[@]}"
    echo
    echo "## CUDA tests"
    echo
    echo '```'
    grep -E '^(PASSED|FAILED|SKIPPED|ERROR)|[0-9]+ (passed|failed|skipped)' \
        "$OUT/cuda_tests.log" 2>&1 | tail -n 20
    echo '```'
    for arch in vit-b swin-b vit-dinov2-g; do
        if [ -f "$OUT/benchmark_$arch/benchmark.md" ]; then
            echo
            sed 's/^# /## /' "$OUT/benchmark_$arch/benchmark.md"
        fi
    done
    if [ -f "$OUT/memory_scaling/memory_scaling.md" ]; then
        echo
        sed 's/^# /## /' "$OUT/memory_scaling/memory_scaling.md"
    fi
    echo
    echo "Full log: $LOG"
} > "$REPORT.tmp" && mv "$REPORT.tmp" "$REPORT"

echo "[gpu_check] wrote $REPORT"
exit $STATUS
