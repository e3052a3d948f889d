"""Turn a full DTL training checkpoint into a small task file.

The task file keeps only what training changed (side network + head), the
configs needed to rebuild them, the class names and the SHA-256 fingerprint
of the frozen backbone it needs (see ``mmdtl.engine.task_checkpoint``).

Example::

    python tools/extract_task_weights.py \\
        work_dirs/vit-b_vtab-cifar/epoch_110.pth configs/dtl/vit-b_vtab-cifar.py \\
        work_dirs/vit-b_vtab-cifar/cifar.task.pth \\
        --backbone-checkpoint checkpoints/vit-b16_in21k_mmpretrain.pth
"""
import argparse
import os
import os.path as osp
import sys

import torch
from mmengine.config import Config, DictAction


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


def _human(num_bytes: float) -> str:
    for unit in ('B', 'KB', 'MB', 'GB'):
        if num_bytes < 1024 or unit == 'GB':
            return f'{num_bytes:.1f} {unit}' if unit != 'B' else f'{int(num_bytes)} B'
        num_bytes /= 1024


def main(argv=None) -> int:
    args = parse_args(argv)
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS

    import mmdtl  # noqa: F401  (registers DTLViT etc.)
    from mmdtl.engine.task_checkpoint import (
        backbone_fingerprint,
        load_backbone_weights,
        save_task_checkpoint,
    )
    from mmdtl.utils import TrunkMismatchError, UnreadableCheckpointError, UnsafeCheckpointError
    from mmdtl.utils.checkpoint import safe_torch_load
    from mmdtl.utils.trunk_keys import nonfinite_tensors

    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    init_cfg = cfg.model.backbone.get('init_cfg')
    backbone_checkpoint = args.backbone_checkpoint
    if backbone_checkpoint is None and isinstance(init_cfg, dict) \
            and init_cfg.get('type') == 'Pretrained':
        backbone_checkpoint = init_cfg.get('checkpoint')
    # The training checkpoint holds every weight: do not read the pre-trained file.
    model_cfg = cfg.model.copy()
    model_cfg.backbone = dict(model_cfg.backbone, init_cfg=None)
    model = MODELS.build(model_cfg)

    try:
        checkpoint = safe_torch_load(args.checkpoint, map_location='cpu')
    except (UnreadableCheckpointError, UnsafeCheckpointError) as e:
        print(f'error: {e}', file=sys.stderr)  # names the file and what is wrong
        return 1
    state = checkpoint.get('state_dict', checkpoint)
    state = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()}
    try:  # the backbone checks its trunk and side network (keys, shapes, values)
        model.load_state_dict(state, strict=True)
    except TrunkMismatchError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    except RuntimeError as e:
        print(f'error: {args.checkpoint} does not fit the model of {args.config}: {e}',
              file=sys.stderr)
        return 1
    # ... and the rest of what the task file keeps (head, neck).
    nonfinite = nonfinite_tensors(
        state, [k for k in state if k.startswith(('head.', 'neck.'))])
    if nonfinite:
        more = ', ...' if len(nonfinite) > 3 else ''
        print(f'error: {args.checkpoint} holds non-finite values (NaN or inf) in '
              f'{len(nonfinite)} head/neck tensors: {", ".join(nonfinite[:3])}{more}; it was '
              'written by a run that diverged: extract an earlier checkpoint of that run.',
              file=sys.stderr)
        return 1
    trained_sha = backbone_fingerprint(model)

    if args.backbone_checkpoint is not None:
        # The task file must load on that backbone: check before writing.
        reference = MODELS.build(dict(cfg.model.backbone, init_cfg=None))
        load_backbone_weights(reference, args.backbone_checkpoint)
        reference_sha = backbone_fingerprint(reference)
        if reference_sha != trained_sha:
            print(f'error: the backbone of {args.checkpoint} (sha256 {trained_sha}) is not '
                  f'{args.backbone_checkpoint} (sha256 {reference_sha}); the task file would '
                  f'not load on it.', file=sys.stderr)
            return 1

    meta = checkpoint.get('meta') or {}
    classes = (meta.get('dataset_meta') or {}).get('classes')
    task_name = args.name or osp.splitext(osp.basename(args.config))[0]
    task_meta = dict(task_name=task_name, source_checkpoint=osp.abspath(args.checkpoint),
                     config=osp.abspath(args.config))
    for key in ('epoch', 'iter'):
        if isinstance(meta.get(key), int):
            task_meta[key] = meta[key]
    content = save_task_checkpoint(
        model, args.out, backbone_checkpoint=backbone_checkpoint, class_names=classes,
        meta=task_meta, backbone_cfg=cfg.model.backbone, head_cfg=cfg.model.get('head'),
        neck_cfg=cfg.model.get('neck'))

    before, after = os.path.getsize(args.checkpoint), os.path.getsize(args.out)
    num = sum(v.numel() for part in ('csn_state', 'head_state', 'neck_state')
              for v in (content[part] or {}).values() if isinstance(v, torch.Tensor))
    print(f'checkpoint : {args.checkpoint} ({_human(before)})')
    print(f'task file  : {args.out} ({_human(after)}, {num:,} values, '
          f'{100 * after / before:.2f}% of the checkpoint)')
    print(f'task       : {task_name}, {len(classes) if classes else "no"} class names')
    print(f'backbone   : sha256 {content["backbone_sha256"]}'
          + (f' ({backbone_checkpoint})' if backbone_checkpoint else ''))
    return 0


if __name__ == '__main__':
    sys.exit(main())
