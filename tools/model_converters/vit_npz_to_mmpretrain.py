"""Convert Google's ViT ``.npz`` checkpoints to mmpretrain's VisionTransformer.

The conversion is ``mmdtl.converters.vit_npz`` (key mapping and checks
documented there); this script only parses the command line.

Example::

    python tools/model_converters/vit_npz_to_mmpretrain.py \\
        ViT-B_16.npz checkpoints/vit-b16_in21k_mmpretrain.pth
"""
import argparse
import os.path as osp
import sys

from mmdtl.converters.vit_npz import (
    HEAD_TYPES,
    ConversionError,
    convert_npz,
    describe,
    load_npz,
)
from mmdtl.utils import save_checkpoint_atomic


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Convert a Google ViT .npz checkpoint to mmpretrain VisionTransformer keys')
    parser.add_argument('src', help='source .npz (e.g. ViT-B_16.npz)')
    parser.add_argument('dst', help='output .pth')
    parser.add_argument('--keep-head', action='store_true',
                        help='keep the classification head (dropped by default)')
    parser.add_argument('--head-type', default='LinearClsHead', choices=HEAD_TYPES,
                        help='head whose key names a kept head uses')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if osp.abspath(args.src) == osp.abspath(args.dst):
        print(f'error: refusing to overwrite the source {args.src}', file=sys.stderr)
        return 1
    try:
        weights = load_npz(args.src)
        state_dict, meta = convert_npz(
            weights, src=args.src, keep_head=args.keep_head, head_type=args.head_type)
    except ConversionError as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    save_checkpoint_atomic(dict(state_dict=state_dict, meta=meta), args.dst)
    print(f'Converted {args.src} -> {args.dst} ({len(state_dict)} tensors)')
    print(describe(meta))
    return 0


if __name__ == '__main__':
    sys.exit(main())
