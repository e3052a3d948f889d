"""Train a model from an OpenMMLab config (mmpretrain, mmdet or mmseg scope).

The config's ``default_scope`` (``mmseg`` from mmseg's base configs, ``mmdet``
from mmdet's, ``mmpretrain`` from ours) picks the registries; DTL backbones are
named ``mmpretrain.DTL...`` in any scope.

Examples::

    python tools/train.py configs/dtl/vit-demo_digits.py
    python tools/train.py configs/mmseg/upernet_dtl+-swin-b-p4-w7_8xb2-160k_ade20k-512x512.py
    python tools/train.py CONFIG --resume                 # latest in work_dir
    python tools/train.py CONFIG --resume PATH.pth --cfg-options train_cfg.max_epochs=200
    bash tools/dist_train.sh CONFIG 8 [ARGS]              # torchrun

A config with a top-level ``global_batch_size`` states the global batch of its
recipe: under N processes each takes ``global_batch_size / N`` images per step
(an error when it does not divide), so the steps per epoch and the learning
rate are those of one process. ``--auto-scale-lr`` keeps the per-process batch
instead and scales the learning rate linearly. Configs without the key keep
OpenMMLab's meaning of ``train_dataloader.batch_size`` (per process).
"""
import argparse
import os

from mmdtl.apis import train
from mmdtl.engine.launch import (
    TRAIN_ERRORS,
    CfgOptionsAction,
    add_launch_arguments,
    finish_distributed,
    one_line_errors,
)


def parse_args():
    parser = argparse.ArgumentParser(description='Train a model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from the given checkpoint; without a path, resume from the latest '
        'checkpoint in the work directory')
    parser.add_argument(
        '--amp',
        action='store_true',
        help='enable automatic mixed precision training (GPU only: falls back to fp32 on '
        'a machine without CUDA)')
    parser.add_argument(
        '--no-validate', action='store_true', help='do not evaluate checkpoints during training')
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help='keep the per-process batch of the config and scale the learning rate linearly '
        'by the global batch (mmengine\'s auto_scale_lr, from global_batch_size or else '
        'auto_scale_lr.base_batch_size). Without it, a config with global_batch_size keeps '
        'that global batch (global_batch_size / processes per process) and its learning rate')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=CfgOptionsAction,
        help='override settings in the config, e.g. train_cfg.max_epochs=2 '
        'train_dataloader.batch_size=4; a list is key="[a,b]" or key=a,b')
    add_launch_arguments(parser)
    args = parser.parse_args()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def main():
    args = parse_args()
    # The policy (batch split, AMP, CPU distributed, checks) is in
    # mmdtl.engine.launch; known errors stop with one line.
    with one_line_errors(TRAIN_ERRORS):
        train(args.config, work_dir=args.work_dir, cfg_options=args.cfg_options,
              resume=args.resume or False, amp=args.amp, no_validate=args.no_validate,
              auto_scale_lr=args.auto_scale_lr, launcher=args.launcher)
    finish_distributed()


if __name__ == '__main__':
    main()
