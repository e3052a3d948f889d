#!/usr/bin/env bash
# Distributed training with torchrun (any config: mmpretrain, mmdet or mmseg).
#   bash tools/dist_train.sh CONFIG GPUS [train.py args]
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR and PORT (defaults 1, 0,
# 127.0.0.1, 29500). Without CUDA, tools/train.py trains with gloo on CPU
# (GPUS processes; SyncBN layers become per-process BN). A config with global_batch_size keeps that global batch
# (global_batch_size / GPUS per process, an error when it does not divide);
# --auto-scale-lr keeps the per-process batch and scales the learning rate.
set -e
CONFIG=$1
GPUS=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-"127.0.0.1"}

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# The repository's virtual environment, when there is one.
PYTHON=python
[ -x "$ROOT/.venv/bin/python" ] && PYTHON="$ROOT/.venv/bin/python"

PYTHONPATH="$ROOT":$PYTHONPATH \
exec "$PYTHON" -m torch.distributed.run \
    --nnodes=$NNODES \
    --node_rank=$NODE_RANK \
    --master_addr=$MASTER_ADDR \
    --nproc_per_node=$GPUS \
    --master_port=$PORT \
    "$ROOT/tools/train.py" \
    "$CONFIG" \
    --launcher pytorch "${@:3}"
