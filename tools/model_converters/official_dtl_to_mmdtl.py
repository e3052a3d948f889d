"""Convert a checkpoint of the official DTL code to an mmdtl ``ImageClassifier``.

The conversion is ``mmdtl.converters.official_dtl`` (key mapping and checks
documented there); this script only parses the command line.

Example::

    python tools/model_converters/official_dtl_to_mmdtl.py \\
        official_cifar100.pth checkpoints/dtl+_vit-b_cifar.pth \\
        --config configs/dtl/vit-b_vtab-cifar.py
"""
import argparse
import os.path as osp
import sys

from mmdtl.converters.official_dtl import (
    ConversionError,
    convert_backbone,
    convert_official,
    describe,
    load_official,
    verify_with_config,
)
from mmdtl.utils import save_checkpoint_atomic


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Convert an official DTL (timm ViT) checkpoint to mmdtl keys')
    parser.add_argument('src', help='official checkpoint (.pth)')
    parser.add_argument('dst', help='output .pth for the mmdtl ImageClassifier')
    parser.add_argument('--config', help='mmdtl config to check the result against '
                        '(builds the model and loads with strict=True)')
    parser.add_argument('--use-ema', action='store_true',
                        help='convert the EMA weights (state_dict_ema)')
    parser.add_argument('--backbone-only', action='store_true',
                        help='write only the frozen trunk, as bare mmpretrain '
                        'VisionTransformer keys for init_cfg=dict(type=\'Pretrained\'); '
                        'also converts a plain timm ViT (no side network)')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if osp.abspath(args.src) == osp.abspath(args.dst):
        print(f'error: refusing to overwrite the source {args.src}', file=sys.stderr)
        return 1
    try:
        source = load_official(args.src, args.use_ema)
        if args.backbone_only:
            if args.config:
                raise ConversionError('--config checks a whole classifier; it does not go '
                                      'with --backbone-only')
            state_dict, meta = convert_backbone(source, args.src)
            print(f'timm ViT trunk of {args.src}: {meta["arch"]}, patch_size='
                  f'{meta["patch_size"]}, img_size={meta["img_size"]}; use it as '
                  f'model.backbone.init_cfg=dict(type=\'Pretrained\', checkpoint=...)')
        else:
            state_dict, meta = convert_official(source, args.src)
            print(f'official DTL checkpoint {args.src}:')
            print(describe(meta))
        if args.config:
            verify_with_config(state_dict, meta, args.config)
    except ConversionError as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    meta.update(source=osp.basename(args.src), converter='official_dtl_to_mmdtl')
    save_checkpoint_atomic(dict(state_dict=state_dict, meta=meta), args.dst)
    print(f'Converted {len(state_dict)} tensors -> {args.dst}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
