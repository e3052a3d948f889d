"""Trainable parameters and activation memory of DTL detectors vs full fine-tuning.

Writes ``detection_memory.md`` and ``detection_memory.csv`` under ``--work-dir``. What it
measures and how is said in ``mmdtl.analysis.detection_memory``, which does the work; this
script parses the command line.

Example::

    python tools/analysis/detection_memory.py configs/mmdet/*.py \\
        --img-size 512 --batch-size 2
    python tools/analysis/detection_memory.py \\
        configs/mmdet/mask-rcnn_dtl+-swin-t-p4-w7_fpn_1x_coco.py --img-size 800 1344
"""
import argparse
import os.path as osp
from typing import List

import torch
from mmengine.config import DictAction

from mmdtl.analysis.detection_memory import ConfigError, run_detection_memory


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Trainable parameters and activation memory of DTL detection configs '
        'against full fine-tuning of the same detector')
    parser.add_argument('configs', nargs='+', metavar='CONFIG', help='detection config files')
    parser.add_argument(
        '--img-size', type=int, nargs='+', default=[512], metavar='SIZE',
        help='image size: one int (square) or HEIGHT WIDTH. Default: 512')
    parser.add_argument('--batch-size', type=int, default=2, help='images per step. Default: 2')
    parser.add_argument(
        '--num-objects', type=int, default=5, help='boxes/masks per image. Default: 5')
    parser.add_argument(
        '--device', default='cuda' if torch.cuda.is_available() else 'cpu',
        help='device of the step (the counts barely depend on it). Default: cuda if available')
    parser.add_argument('--seed', type=int, default=0, help='random seed. Default: 0')
    parser.add_argument(
        '--work-dir', default='work_dirs/detection_memory',
        help='where the markdown and CSV tables go. Default: work_dirs/detection_memory')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override settings of every config, e.g. model.backbone.csn.dwconv_kernel=0')
    args = parser.parse_args(argv)
    if len(args.img_size) not in (1, 2) or min(args.img_size) < 32:
        parser.error(f'--img-size takes SIZE or HEIGHT WIDTH (each >= 32), got {args.img_size}')
    if args.batch_size < 1 or args.num_objects < 1:
        parser.error('--batch-size and --num-objects must be >= 1')
    return args


def main(argv=None) -> List[dict]:
    args = parse_args(argv)
    try:
        rows = run_detection_memory(
            args.configs, img_size=args.img_size, batch_size=args.batch_size,
            num_objects=args.num_objects, device=args.device, seed=args.seed,
            work_dir=args.work_dir, cfg_options=args.cfg_options)
    except ConfigError as error:
        raise SystemExit(str(error)) from None
    md = osp.join(args.work_dir, 'detection_memory.md')
    with open(md, encoding='utf-8') as f:
        print(f.read())
    print('wrote', ', '.join([md, osp.join(args.work_dir, 'detection_memory.csv')]))
    return rows


if __name__ == '__main__':
    main()
