"""Turn a full DTL training checkpoint into a small task file.

The task file keeps only what training changed (side network + head), the
configs needed to rebuild them, the class names and the SHA-256 fingerprint
of the frozen backbone it needs (see ``mmdtl.engine.task_checkpoint``).
Before writing, the checkpoint is loaded strictly into the config's model
(the backbone checks its trunk and side network) and the head and neck it
copies are checked for non-finite values; with a backbone checkpoint, its
fingerprint must be the trained backbone's.

``tools/extract_task_weights.py`` is the command line of this module.
"""
import os
import os.path as osp
from typing import Optional

import torch
from mmengine.config import Config

from .errors import ConversionError


def extract_task_weights(checkpoint: str,
                         config: str,
                         out: str,
                         backbone_checkpoint: Optional[str] = None,
                         name: Optional[str] = None,
                         cfg_options: Optional[dict] = None) -> dict:
    """Write the task file of a training checkpoint.

    Args:
        checkpoint (str): A full mmengine training checkpoint.
        config (str): The training config.
        out (str): The task file to write.
        backbone_checkpoint (str, optional): The frozen backbone the task
            needs. If given it is loaded and must have the fingerprint of the
            checkpoint's backbone; defaults to the config's backbone
            ``init_cfg`` checkpoint (recorded, not loaded).
        name (str, optional): The task name. Defaults to the config's file
            name.
        cfg_options (dict, optional): Config overrides (``key=value`` as in
            ``tools/train.py``).

    Returns:
        dict: ``content`` (what the task file holds), ``task_name``,
        ``classes``, ``backbone_checkpoint`` (recorded), ``checkpoint`` and
        ``out``; :func:`describe` formats it.

    Raises:
        ConversionError: The checkpoint does not fit the config's model, its
            head or neck holds non-finite values, or ``backbone_checkpoint``
            is another backbone. Nothing is written then.
        UnreadableCheckpointError, UnsafeCheckpointError: The checkpoint is
            refused (the message names it).
        TrunkMismatchError: Its trunk or side network does not fit.
    """
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS

    import mmdtl  # noqa: F401  (registers DTLViT etc.)
    from mmdtl.engine.task_checkpoint import (
        backbone_fingerprint,
        load_backbone_weights,
        save_task_checkpoint,
    )
    from mmdtl.utils import TrunkMismatchError
    from mmdtl.utils.checkpoint import safe_torch_load
    from mmdtl.utils.trunk_keys import nonfinite_tensors

    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    init_cfg = cfg.model.backbone.get('init_cfg')
    recorded_backbone = backbone_checkpoint
    if recorded_backbone is None and isinstance(init_cfg, dict) \
            and init_cfg.get('type') == 'Pretrained':
        recorded_backbone = init_cfg.get('checkpoint')
    # The training checkpoint holds every weight: do not read the pre-trained file.
    model_cfg = cfg.model.copy()
    model_cfg.backbone = dict(model_cfg.backbone, init_cfg=None)
    model = MODELS.build(model_cfg)

    loaded = safe_torch_load(checkpoint, map_location='cpu')
    state = loaded.get('state_dict', loaded)
    state = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()}
    try:  # the backbone checks its trunk and side network (keys, shapes, values)
        model.load_state_dict(state, strict=True)
    except TrunkMismatchError:
        raise
    except RuntimeError as e:
        raise ConversionError(f'{checkpoint} does not fit the model of {config}: {e}') from e
    # ... and the rest of what the task file keeps (head, neck).
    nonfinite = nonfinite_tensors(
        state, [k for k in state if k.startswith(('head.', 'neck.'))])
    if nonfinite:
        more = ', ...' if len(nonfinite) > 3 else ''
        raise ConversionError(
            f'{checkpoint} holds non-finite values (NaN or inf) in {len(nonfinite)} '
            f'head/neck tensors: {", ".join(nonfinite[:3])}{more}; it was written by a run '
            'that diverged: extract an earlier checkpoint of that run.')
    trained_sha = backbone_fingerprint(model)

    if backbone_checkpoint is not None:
        # The task file must load on that backbone: check before writing.
        reference = MODELS.build(dict(cfg.model.backbone, init_cfg=None))
        load_backbone_weights(reference, backbone_checkpoint)
        reference_sha = backbone_fingerprint(reference)
        if reference_sha != trained_sha:
            raise ConversionError(
                f'the backbone of {checkpoint} (sha256 {trained_sha}) is not '
                f'{backbone_checkpoint} (sha256 {reference_sha}); the task file would '
                f'not load on it.')

    meta = loaded.get('meta') or {}
    classes = (meta.get('dataset_meta') or {}).get('classes')
    task_name = name or osp.splitext(osp.basename(config))[0]
    task_meta = dict(task_name=task_name, source_checkpoint=osp.abspath(checkpoint),
                     config=osp.abspath(config))
    for key in ('epoch', 'iter'):
        if isinstance(meta.get(key), int):
            task_meta[key] = meta[key]
    content = save_task_checkpoint(
        model, out, backbone_checkpoint=recorded_backbone, class_names=classes,
        meta=task_meta, backbone_cfg=cfg.model.backbone, head_cfg=cfg.model.get('head'),
        neck_cfg=cfg.model.get('neck'))
    return dict(content=content, task_name=task_name, classes=classes,
                backbone_checkpoint=recorded_backbone, checkpoint=checkpoint, out=out)


def _human(num_bytes: float) -> str:
    for unit in ('B', 'KB', 'MB', 'GB'):
        if num_bytes < 1024 or unit == 'GB':
            return f'{num_bytes:.1f} {unit}' if unit != 'B' else f'{int(num_bytes)} B'
        num_bytes /= 1024


def describe(result: dict) -> str:
    """The sizes, task and backbone of an extracted task file, to print.

    Args:
        result (dict): What :func:`extract_task_weights` returned.

    Returns:
        str: Four lines: checkpoint and task file sizes (values kept, share
        of the checkpoint), task name and class names, backbone fingerprint.
    """
    content, classes = result['content'], result['classes']
    checkpoint, out = result['checkpoint'], result['out']
    before, after = os.path.getsize(checkpoint), os.path.getsize(out)
    num = sum(v.numel() for part in ('csn_state', 'head_state', 'neck_state')
              for v in (content[part] or {}).values() if isinstance(v, torch.Tensor))
    backbone = result['backbone_checkpoint']
    return '\n'.join([
        f'checkpoint : {checkpoint} ({_human(before)})',
        f'task file  : {out} ({_human(after)}, {num:,} values, '
        f'{100 * after / before:.2f}% of the checkpoint)',
        f'task       : {result["task_name"]}, {len(classes) if classes else "no"} class names',
        f'backbone   : sha256 {content["backbone_sha256"]}'
        + (f' ({backbone})' if backbone else ''),
    ])
