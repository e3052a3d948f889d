#!/usr/bin/env bash
# Idempotent set-up of .venv for mmdtl (CPU machine or GPU machine).
#
# - torch 2.13.0 (registry CUDA build; it runs on CPU too, and torchvision's
#   binary needs it), torchvision 0.28.0, mmengine, mmpretrain, mmdet,
#   mmsegmentation (with ftfy and regex, which `import mmseg.models` needs but
#   its wheel does not require);
# - mmcv 2.1.0 with compiled ops, built once into a wheel cache keyed by the
#   torch version and the kind of ops (cpu, or cuda where torch sees a GPU or
#   FORCE_CUDA=1; MMDTL_WHEEL_CACHE, default ~/.cache/mmdtl/wheels) so a
#   re-install takes seconds and a wheel built against another torch, or
#   without the CUDA ops a GPU machine needs, is never reused.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
TORCH_VERSION=2.13.0
TORCHVISION_VERSION=0.28.0
MMCV_VERSION=2.1.0
STAMP=$VENV/.mmdtl-installed

if [ -f "$STAMP" ] && [ "$STAMP" -nt setup.py ] && [ "$STAMP" -nt tools/install.sh ]; then
    exit 0
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q "setuptools<82" wheel
# The CPU-only '+cpu' wheel breaks torchvision's import; exclude it explicitly.
$PIP install -q "setuptools<82" "torch==$TORCH_VERSION,!=$TORCH_VERSION+cpu" "torchvision==$TORCHVISION_VERSION"
# setuptools is pinned in every call: some dependencies would upgrade it.

# mmcv's setup.py compiles CUDA ops when torch sees a GPU or FORCE_CUDA=1.
OPS_KIND=$($VENV/bin/python -c "import os, torch; print('cuda' if torch.cuda.is_available() or os.environ.get('FORCE_CUDA') == '1' else 'cpu')")
WHEEL_DIR=${MMDTL_WHEEL_CACHE:-$HOME/.cache/mmdtl/wheels}/torch-$TORCH_VERSION-$OPS_KIND
if ! $VENV/bin/python -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '$MMCV_VERSION'" 2>/dev/null; then
    if ! ls "$WHEEL_DIR"/mmcv-$MMCV_VERSION-*.whl >/dev/null 2>&1; then
        echo "[install] building mmcv $MMCV_VERSION with ops (about 20 min on 2 cores; cached afterwards in $WHEEL_DIR)"
        mkdir -p "$WHEEL_DIR"
        MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} $PIP wheel -q --no-build-isolation --no-deps \
            -w "$WHEEL_DIR" "mmcv==$MMCV_VERSION"
    fi
    $PIP install -q --no-deps "$WHEEL_DIR"/mmcv-$MMCV_VERSION-*.whl
    # mmcv's own light dependencies (no-deps above keeps pip from resolving torch again)
    $PIP install -q "setuptools<82" addict packaging Pillow pyyaml regex yapf opencv-python
fi
# mmengine, mmpretrain, mmdet, mmseg and the test tools: the ranges setup.py
# declares (mmdtl/requirements.py); torch and mmcv above already satisfy theirs
$PIP install -q "setuptools<82" -e ".[all,tests]"
$VENV/bin/python -c "import mmcv.ops, mmpretrain, mmdet, mmdtl, mmseg.models, mmseg.datasets, mmseg.evaluation"
touch "$STAMP"
echo "[install] ready: $VENV"
