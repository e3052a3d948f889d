"""Turn a full DTL training checkpoint into a small task file.

The task file keeps only what training changed (side network + head), the
configs needed to rebuild them, the class names and the SHA-256 fingerprint
of the frozen backbone it needs (see ``mmdtl.engine.task_checkpoint``).
The extraction is ``mmdtl.converters.task_weights``; this script parses the
command line.

Example::

    python tools/extract_task_weights.py \\
        work_dirs/vit-b_vtab-cifar/epoch_110.pth configs/dtl/vit-b_vtab-cifar.py \\
        work_dirs/vit-b_vtab-cifar/cifar.task.pth \\
        --backbone-checkpoint checkpoints/vit-b16_in21k_mmpretrain.pth
"""
import argparse
import sys

from mmengine.config import DictAction


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('checkpoint', help='full mmengine training checkpoint')
    parser.add_argument('config', help='the training config')
    parser.add_argument('out', help='task file to write')
    parser.add_argument('--backbone-checkpoint', default=None,
                        help='frozen backbone the task needs; defaults to the config\'s '
                        'backbone init_cfg checkpoint. If given, it is loaded and must '
                        'have the fingerprint of the training checkpoint\'s backbone')
    parser.add_argument('--name', default=None,
                        help='task name (defaults to the config file name)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='config overrides, key=value (as in tools/train.py)')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from mmdtl.converters.errors import ConversionError
    from mmdtl.converters.task_weights import describe, extract_task_weights
    from mmdtl.utils import TrunkMismatchError, UnreadableCheckpointError, UnsafeCheckpointError

    try:
        result = extract_task_weights(
            args.checkpoint, args.config, args.out, backbone_checkpoint=args.backbone_checkpoint,
            name=args.name, cfg_options=args.cfg_options)
    except (ConversionError, TrunkMismatchError, UnreadableCheckpointError,
            UnsafeCheckpointError) as e:
        print(f'error: {e}', file=sys.stderr)  # names the file and what is wrong
        return 1
    print(describe(result))
    return 0


if __name__ == '__main__':
    sys.exit(main())
