"""Classify images with several DTL tasks sharing one frozen backbone.

The frozen prefix of the backbone runs once per image; each task runs only
its own remaining blocks (see ``mmdtl.models.MultiTaskDTL``).

Example::

    python tools/multitask_infer.py configs/dtl/vit-b_vtab-cifar.py \\
        work_dirs/cifar/task_final.pth work_dirs/dtd/task_final.pth \\
        --images demo/ --backbone-checkpoint checkpoints/vit-b16_in21k_mmpretrain.pth
"""
import argparse
import os.path as osp
import sys


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', help='config with the backbone and the test pipeline')
    parser.add_argument('task_files', nargs='+', metavar='TASK_FILE',
                        help='task files (tools/extract_task_weights.py, '
                        'TaskCheckpointHook); NAME=FILE sets the task name')
    parser.add_argument('--images', required=True, help='image folder or image file')
    parser.add_argument('--backbone-checkpoint', default=None,
                        help='frozen backbone weights (default: the config\'s init_cfg, '
                        'else the one recorded in the task files)')
    parser.add_argument('--topk', type=int, default=3, help='classes per task and image')
    parser.add_argument('--device', default='cpu', help='e.g. cpu, cuda:0')
    parser.add_argument('--batch-size', type=int, default=8)
    return parser.parse_args(argv)


def _task_files(items):
    """``FILE`` or ``NAME=FILE`` entries -> list of files or dict name -> file."""
    named = [item.split('=', 1) for item in items if '=' in item and not osp.exists(item)]
    if not named:
        return list(items)
    if len(named) != len(items):
        raise SystemExit('error: name either all task files (NAME=FILE) or none')
    return {name: path for name, path in named}


def main(argv=None) -> int:
    args = parse_args(argv)
    import mmdtl  # noqa: F401
    from mmdtl.engine import BackboneMismatchError
    from mmdtl.models import MultiTaskInferencer
    from mmdtl.utils import TrunkMismatchError, UnreadableCheckpointError, UnsafeCheckpointError

    try:
        inferencer = MultiTaskInferencer(args.config, args.backbone_checkpoint,
                                         _task_files(args.task_files), device=args.device,
                                         batch_size=args.batch_size)
    except (BackboneMismatchError, TrunkMismatchError, UnreadableCheckpointError,
            UnsafeCheckpointError, FileNotFoundError, ValueError) as e:
        # a task or backbone file that does not fit, or is refused: the message says it
        raise SystemExit(f'error: {e}') from None
    model = inferencer.model
    print(f'backbone sha256 {model.backbone_sha256[:16]}...; shared blocks 0..'
          f'{max(model.starts.values())} once, then per task:')
    for name in model.task_names:
        print(f'  {name}: M={model.starts[name]}, {model.task_files[name]}')
    images = inferencer.list_images(args.images)
    results = inferencer(images, topk=args.topk)
    width = max(len(n) for n in model.task_names)
    for image, result in zip(images, results):
        print(image)
        for name, top in result.items():
            ranked = ', '.join(f'{cls} {score:.3f}' for cls, score in top)
            print(f'  {name:<{width}}  {ranked}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
