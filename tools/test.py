"""Evaluate a checkpoint on a config's test set (mmpretrain, mmdet or mmseg scope).

Examples::

    python tools/test.py configs/dtl/vit-demo_digits.py work_dirs/vit-demo_digits/epoch_15.pth
    python tools/test.py configs/mmseg/upernet_dtl+-swin-b-p4-w7_8xb2-160k_ade20k-512x512.py \
        work_dirs/upernet_dtl+-swin-b-p4-w7_8xb2-160k_ade20k-512x512/iter_160000.pth
    python tools/test.py CONFIG CKPT --out results.pkl --show-dir vis
    bash tools/dist_test.sh CONFIG CKPT 8 [ARGS]          # torchrun
"""
import argparse
import os

from mmengine.dist import is_main_process

from mmdtl.apis import test
from mmdtl.engine.launch import (
    CHECKPOINT_ERRORS,
    CfgOptionsAction,
    add_launch_arguments,
    finish_distributed,
    one_line_errors,
)


def parse_args():
    parser = argparse.ArgumentParser(description='Evaluate a checkpoint')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--work-dir', help='the dir to save logs (default: ./work_dirs/<config name>)')
    parser.add_argument(
        '--out', help='dump the raw predictions to this pickle file (.pkl or .pickle)')
    parser.add_argument(
        '--show-dir', help='save images with drawn predictions to this directory')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=CfgOptionsAction,
        help='override settings in the config, e.g. test_dataloader.batch_size=8')
    add_launch_arguments(parser)
    args = parser.parse_args()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        parser.error(f'--out must end with .pkl or .pickle, got {args.out!r}')
    return args


def main():
    args = parse_args()
    # The policy (fp32 evaluation without a GPU, CPU distributed, --show-dir
    # per codebase) is in mmdtl.engine.launch; known errors stop with one line.
    with one_line_errors(CHECKPOINT_ERRORS):
        metrics = test(args.config, args.checkpoint, work_dir=args.work_dir,
                       cfg_options=args.cfg_options, out=args.out, show_dir=args.show_dir,
                       launcher=args.launcher)
    if is_main_process():
        print(f'Test metrics of {args.checkpoint}:')
        for name, value in (metrics or {}).items():
            print(f'  {name}: {value}')
    finish_distributed()
    return metrics


if __name__ == '__main__':
    main()
