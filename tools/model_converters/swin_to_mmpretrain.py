"""Convert Swin Transformer checkpoints to mmpretrain's SwinTransformer.

The conversion is ``mmdtl.converters.swin`` (key mapping and checks
documented there); this script only parses the command line.

Example::

    python tools/model_converters/swin_to_mmpretrain.py \\
        swin_base_patch4_window7_224_22k.pth checkpoints/swin-b_in22k_mmpretrain.pth
"""
import argparse
import os.path as osp
import sys

from mmdtl.converters.swin import ConversionError, convert_swin, load_checkpoint
from mmdtl.utils import save_checkpoint_atomic


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Convert an official / timm Swin checkpoint to mmpretrain SwinTransformer '
                    'keys')
    parser.add_argument('src', help='source .pth (e.g. swin_base_patch4_window7_224_22k.pth)')
    parser.add_argument('dst', help='output .pth')
    parser.add_argument('--keep-head', action='store_true',
                        help='keep the classification head as head.fc.* (dropped by default)')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if osp.abspath(args.src) == osp.abspath(args.dst):
        print(f'error: refusing to overwrite the source {args.src}', file=sys.stderr)
        return 1
    try:
        state_dict, meta = convert_swin(
            load_checkpoint(args.src), src=args.src, keep_head=args.keep_head)
    except ConversionError as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    save_checkpoint_atomic(dict(state_dict=state_dict, meta=meta), args.dst)
    print(f'Converted {args.src} -> {args.dst} ({len(state_dict)} tensors, {meta["layout"]} '
          f'layout)')
    print(f'  arch={meta["arch"]}, window_size={meta["window_size"]}, '
          f'patch_size={meta["patch_size"]}, head: '
          f'{meta["head"]["num_classes"]} classes, {"kept" if meta["head"]["kept"] else "dropped"}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
