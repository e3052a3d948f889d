"""Task files: the few kilobytes a DTL fine-tuning actually changes.

DTL never changes the backbone, so a trained task is fully described by its
Compact Side Network, its head and the exact frozen backbone it was trained
on. A *task file* stores only those (plus the configs needed to rebuild them
and the class names) and is tied to its backbone by a SHA-256 fingerprint of
the frozen backbone tensors. For ViT-B/16 DTL+ rank 2 with a 100-class head
that is about 43,776 + 76,900 floats (0.5 MB) instead of a 344 MB checkpoint.

Layout of a task file (a dict of tensors and plain Python values, so it loads
with ``torch.load(weights_only=True)``)::

    format           'mmdtl-task'
    version          1
    backbone_sha256  str, see :func:`backbone_fingerprint`
    backbone_checkpoint  str | None, where the frozen backbone comes from
    backbone_cfg     dict, the backbone config without ``csn``
    csn_cfg          dict, type/rank/taps/start/beta/dwconv_kernel/...
    csn_state        dict[str, Tensor]
    head_cfg, head_state   dict | None (None: features are the output)
    neck_cfg, neck_state   dict | None
    class_names      list[str] | None
    meta             dict of plain values (epoch, source, ...)
"""
import copy
import hashlib
import os.path as osp
from collections.abc import Mapping
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
from mmengine.model import is_model_wrapper

from mmdtl.utils.checkpoint import safe_torch_load, save_checkpoint_atomic
from mmdtl.utils.trunk_keys import clear_untrained_load, nonfinite_tensors

TASK_FILE_FORMAT = 'mmdtl-task'
TASK_FILE_VERSION = 1
_REQUIRED_KEYS = ('backbone_sha256', 'csn_cfg', 'csn_state', 'head_cfg', 'head_state')
# CSN settings that change the computation without changing tensor shapes,
# so a mismatch must be caught explicitly rather than by load_state_dict.
_CSN_KEYS = ('rank', 'taps', 'start', 'add_back_blocks', 'beta', 'dwconv_kernel', 'stages')

__all__ = [
    'BackboneMismatchError', 'backbone_fingerprint', 'save_task_checkpoint',
    'load_task_checkpoint', 'read_task_file', 'load_backbone_weights', 'csn_config',
    'TASK_FILE_FORMAT', 'TASK_FILE_VERSION'
]


class BackboneMismatchError(ValueError):
    """A task file was trained on a different frozen backbone."""


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if is_model_wrapper(model) else model


def _dtl_backbone(model: nn.Module) -> nn.Module:
    """The DTL backbone of a classifier (``model.backbone``) or the backbone itself."""
    model = _unwrap(model)
    backbone = getattr(model, 'backbone', model)
    if not hasattr(backbone, 'csn'):
        raise TypeError(f'Expected a DTL backbone (with a `csn` side network) or a model '
                        f'holding one as `.backbone`, got {type(model).__name__}.')
    return backbone


def _backbone_state(state_dict: Mapping) -> Mapping:
    """Backbone keys of a state dict: a checkpoint dict, a classifier state
    dict (``backbone.*`` keys) or a backbone state dict."""
    if isinstance(state_dict.get('state_dict'), Mapping):
        state_dict = state_dict['state_dict']
    if any(k.startswith('module.') for k in state_dict):
        state_dict = {k[len('module.'):]: v for k, v in state_dict.items()}
    if any(k.startswith('backbone.') for k in state_dict):
        state_dict = {k[len('backbone.'):]: v for k, v in state_dict.items()
                      if k.startswith('backbone.')}
    return state_dict


def backbone_fingerprint(model_or_state_dict: Union[nn.Module, Mapping]) -> str:
    """SHA-256 of the frozen backbone tensors.

    Hashes every backbone state-dict entry except the side network
    (``csn.*``), in sorted name order, each as its name, dtype, shape and raw
    bytes. It identifies the backbone *as built* (after checkpoint loading and
    key renames such as the final norm ``ln1`` -> ``ln2`` of ``DTLViT``), so
    compare fingerprints of models, or of state dicts taken from models.

    Args:
        model_or_state_dict (nn.Module | Mapping): A DTL backbone, a model
            with one as ``.backbone``, or a state dict (bare backbone keys,
            ``backbone.*`` keys, or a checkpoint dict with ``state_dict``).

    Returns:
        str: The hex digest.
    """
    if isinstance(model_or_state_dict, Mapping):
        state = _backbone_state(model_or_state_dict)
    else:
        state = _dtl_backbone(model_or_state_dict).state_dict()
    hasher = hashlib.sha256()
    for name in sorted(k for k in state if not k.startswith('csn.')):
        tensor = state[name]
        if not isinstance(tensor, torch.Tensor):
            continue
        tensor = tensor.detach().cpu().contiguous()
        header = f'{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0{tensor.nbytes}\0'
        hasher.update(header.encode('utf-8'))
        # Raw bytes of any dtype (bf16 has no numpy equivalent).
        hasher.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return hasher.hexdigest()


def _plain(value: Any, where: str) -> Any:
    """Deep-copy ``value`` into dict/list/str/number/bool/None, so the task
    file needs no allow-listed globals (ConfigDict -> dict, tuple -> list)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f'{where}: keys must be str, got {key!r}')
            out[key] = _plain(item, f'{where}.{key}')
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(item, f'{where}[{i}]') for i, item in enumerate(value)]
    if hasattr(value, 'item') and getattr(value, 'ndim', None) == 0:  # numpy scalar
        return value.item()
    raise TypeError(f'{where}: {type(value).__name__} cannot be stored in a task file; '
                    f'use str, int, float, bool, None, list or dict.')


def _tensors(module: nn.Module) -> Dict[str, torch.Tensor]:
    # clone(): a view would make torch.save write the whole underlying storage.
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def csn_config(csn: nn.Module) -> dict:
    """The config that rebuilds a :class:`CompactSideNetwork` with ``MODELS.build``."""
    return dict(type=type(csn).__name__, embed_dims=list(csn.embed_dims),
                num_layers=csn.num_layers, rank=csn.rank, taps=list(csn.taps),
                start=csn.start, add_back_blocks=list(csn.add_back_blocks),
                beta=float(csn.beta), dwconv_kernel=csn.dwconv_kernel,
                stages=list(csn.stages))


def _derived_backbone_cfg(backbone: nn.Module) -> dict:
    """What can be read back from a built backbone (used without a config)."""
    cfg = dict(type=type(backbone).__name__)
    arch = getattr(backbone, 'arch_settings', None)
    if isinstance(arch, Mapping):
        cfg['arch'] = dict(arch)
    for name in ('img_size', 'out_type', 'final_norm', 'with_cls_token', 'out_indices',
                 'interpolate_mode', 'out_after_downsample', 'window_size'):
        if hasattr(backbone, name):
            cfg[name] = getattr(backbone, name)
    patch_embed = getattr(backbone, 'patch_embed', None)
    if patch_embed is not None and hasattr(patch_embed, 'projection'):
        cfg['patch_size'] = patch_embed.projection.stride
    return _plain(cfg, 'backbone_cfg')


def _derived_neck_cfg(neck: nn.Module) -> dict:
    if type(neck).__name__ == 'GlobalAveragePooling':
        dims = {nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3}
        return dict(type='GlobalAveragePooling', dim=dims[type(neck.gap)])
    raise ValueError(f'Cannot derive the config of a {type(neck).__name__} neck; pass '
                     f'neck_cfg (e.g. the `model.neck` of the training config).')


def _derived_head_cfg(head: nn.Module) -> dict:
    if type(head).__name__ == 'LinearClsHead':
        return dict(type='LinearClsHead', num_classes=head.num_classes,
                    in_channels=head.in_channels)
    raise ValueError(f'Cannot derive the config of a {type(head).__name__} head; pass '
                     f'head_cfg (e.g. the `model.head` of the training config).')


def _pretrained_path(init_cfg: Any) -> Optional[str]:
    if isinstance(init_cfg, (list, tuple)):
        paths = [_pretrained_path(c) for c in init_cfg]
        return next((p for p in paths if p), None)
    if isinstance(init_cfg, Mapping) and init_cfg.get('type') == 'Pretrained':
        return init_cfg.get('checkpoint')
    return None


def check_frozen_backbone(model: nn.Module) -> None:
    """Refuse models whose backbone (outside the side network) is trainable:
    a task file would silently miss those changes."""
    backbone = _dtl_backbone(model)
    trainable = [n for n, p in backbone.named_parameters()
                 if p.requires_grad and not n.startswith('csn.')]
    if trainable:
        raise ValueError(
            f'Task files hold only the side network and the head, but backbone parameters '
            f'outside `csn` are trainable ({trainable[:3]}{"..." if len(trainable) > 3 else ""}'
            f'); train with `freeze_backbone=True` or save a full checkpoint instead.')


def save_task_checkpoint(model: nn.Module,
                         path: str,
                         backbone_checkpoint: Optional[str] = None,
                         class_names: Optional[Sequence[str]] = None,
                         meta: Optional[dict] = None,
                         *,
                         backbone_cfg: Optional[dict] = None,
                         head_cfg: Optional[dict] = None,
                         neck_cfg: Optional[dict] = None) -> dict:
    """Write what DTL training changed: the side network and the head.

    The file is written atomically (temporary file in the same folder, then
    ``os.replace``) and holds tensors and plain Python values only.

    Args:
        model (nn.Module): A classifier with a DTL backbone (e.g.
            ``ImageClassifier`` with ``DTLViT``) or a bare DTL backbone.
        path (str): Output file.
        backbone_checkpoint (str, optional): Where the frozen backbone comes
            from. Defaults to the backbone's ``Pretrained`` init_cfg, if any.
        class_names (Sequence[str], optional): One name per head output.
        meta (dict, optional): Extra plain values to record.
        backbone_cfg (dict, optional): The backbone config (``csn`` and
            ``init_cfg`` are dropped). Defaults to what the built backbone
            exposes (arch, img_size, patch_size, out_type, ...).
        head_cfg (dict, optional): The head config. Defaults to one derived
            from a ``LinearClsHead``.
        neck_cfg (dict, optional): The neck config. Defaults to one derived
            from a ``GlobalAveragePooling`` neck.

    Returns:
        dict: The saved content.
    """
    model = _unwrap(model)
    backbone = _dtl_backbone(model)
    check_frozen_backbone(model)
    if backbone_checkpoint is None:
        backbone_checkpoint = _pretrained_path(getattr(backbone, 'init_cfg', None))
    if backbone_cfg is None:
        backbone_cfg = _derived_backbone_cfg(backbone)
    else:
        backbone_cfg = {k: v for k, v in backbone_cfg.items() if k not in ('csn', 'init_cfg')}

    head = getattr(model, 'head', None) if model is not backbone else None
    head_state = None
    if head is not None:
        head_cfg = _derived_head_cfg(head) if head_cfg is None else head_cfg
        head_state = _tensors(head)
    neck = getattr(model, 'neck', None) if model is not backbone else None
    neck_state = None
    if neck is not None:
        # A neck without state (Swin's GlobalAveragePooling) is still part of
        # the task: record its config so that serving can rebuild it.
        neck_cfg = _derived_neck_cfg(neck) if neck_cfg is None else neck_cfg
        neck_state = _tensors(neck)
    else:
        neck_cfg = None

    if class_names is not None:
        class_names = [str(c) for c in class_names]
        num_classes = getattr(head, 'num_classes', None)
        if num_classes is not None and len(class_names) != num_classes:
            raise ValueError(f'{len(class_names)} class names given for a head with '
                             f'{num_classes} classes.')

    content = dict(
        format=TASK_FILE_FORMAT,
        version=TASK_FILE_VERSION,
        backbone_sha256=backbone_fingerprint(backbone),
        backbone_checkpoint=None if backbone_checkpoint is None else str(backbone_checkpoint),
        backbone_cfg=_plain(backbone_cfg, 'backbone_cfg'),
        csn_cfg=csn_config(backbone.csn),
        csn_state=_tensors(backbone.csn),
        head_cfg=_plain(head_cfg, 'head_cfg') if head is not None else None,
        head_state=head_state,
        neck_cfg=_plain(neck_cfg, 'neck_cfg'),
        neck_state=neck_state,
        class_names=class_names,
        meta=_plain(meta or {}, 'meta'),
    )
    save_checkpoint_atomic(content, path)
    return content


def read_task_file(path: str) -> dict:
    """Load and validate a task file (``weights_only=True``).

    Args:
        path (str): The task file.

    Returns:
        dict: Its content, see the module docstring.

    Raises:
        UnsafeCheckpointError: The file needs a pickled global that is not
            allowed; the message names the file and the global.
        UnreadableCheckpointError: The file is empty or cut short.
        ValueError: It is not a task file, is of a newer version, lacks
            entries, or its side network, head or neck hold NaN or inf.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(f'Task file {path} does not exist.')
    content = safe_torch_load(path, map_location='cpu')
    if not isinstance(content, dict) or content.get('format') != TASK_FILE_FORMAT:
        raise ValueError(f'{path} is not a task file (no format={TASK_FILE_FORMAT!r}); '
                         f'make one with tools/extract_task_weights.py.')
    if content.get('version', 0) > TASK_FILE_VERSION:
        raise ValueError(f'{path} has task file version {content["version"]}, newer than '
                         f'the supported {TASK_FILE_VERSION}; update mmdtl.')
    missing = [k for k in _REQUIRED_KEYS if k not in content]
    if missing:
        raise ValueError(f'Task file {path} lacks {missing}.')
    tensors = {f'{part}.{k}': v for part in ('csn_state', 'head_state', 'neck_state')
               if isinstance(content.get(part), Mapping) for k, v in content[part].items()}
    nonfinite = nonfinite_tensors(tensors)
    if nonfinite:
        more = ', ...' if len(nonfinite) > 3 else ''
        raise ValueError(
            f'Task file {path} holds non-finite values (NaN or inf) in {len(nonfinite)} of '
            f'its {len(tensors)} tensors: {", ".join(nonfinite[:3])}{more}. It was written by '
            f'a run that diverged or is damaged: take an earlier task file of that run or '
            f'extract one from an earlier checkpoint (tools/extract_task_weights.py).')
    return content


def check_fingerprint(content: dict, actual: str, path: str) -> None:
    """Raise :class:`BackboneMismatchError` unless the hashes agree."""
    expected = content['backbone_sha256']
    if expected != actual:
        source = content.get('backbone_checkpoint')
        hint = (f'load the backbone checkpoint it was trained with ({source})'
                if source else 'load the backbone checkpoint it was trained with')
        raise BackboneMismatchError(
            f'Task file {path} belongs to another backbone: expected backbone sha256 '
            f'{expected}, but the model backbone has sha256 {actual}; {hint}.')


def check_csn_config(content: dict, csn: nn.Module, path: str) -> None:
    """Raise unless the side network has the task file's rank/taps/start/..."""
    saved, current = content['csn_cfg'], csn_config(csn)
    diff = [f'{k}: file {saved[k]!r} vs model {current[k]!r}'
            for k in _CSN_KEYS if k in saved and saved[k] != current[k]]
    if diff:
        raise ValueError(f'Task file {path} was trained with another side network config '
                         f'({"; ".join(diff)}); build the model with its csn_cfg '
                         f'{saved} (or use MultiTaskDTL, which does).')


def load_task_checkpoint(model: nn.Module, path: str, strict: bool = True) -> dict:
    """Load a task file's side network and head onto ``model``.

    Args:
        model (nn.Module): A classifier with a DTL backbone (or a bare DTL
            backbone) whose frozen backbone has the file's fingerprint and
            whose side network has the file's config.
        path (str): The task file.
        strict (bool): Passed to ``load_state_dict`` of the side network and
            the head. Defaults to True.

    Returns:
        dict: The file content (class names, configs, meta).

    Raises:
        BackboneMismatchError: The backbone fingerprint differs; the message
            names the file and both hashes.
    """
    content = read_task_file(path)
    model = _unwrap(model)
    backbone = _dtl_backbone(model)
    check_fingerprint(content, backbone_fingerprint(backbone), path)
    check_csn_config(content, backbone.csn, path)
    backbone.csn.load_state_dict(content['csn_state'], strict=strict)
    head = getattr(model, 'head', None) if model is not backbone else None
    head_state = content['head_state']
    if head is not None and head_state is not None:
        head.load_state_dict(head_state, strict=strict)
    elif strict and head_state is not None:
        raise ValueError(f'Task file {path} has a head but the model has none.')
    elif strict and head is not None:
        raise ValueError(f'Task file {path} has no head state for the model\'s head.')
    neck = getattr(model, 'neck', None) if model is not backbone else None
    if neck is not None and content.get('neck_state') is not None:
        neck.load_state_dict(content['neck_state'], strict=strict)
    clear_untrained_load(backbone)  # the side network and head are the trained ones now
    if content.get('class_names'):
        # mmpretrain's inferencers read the class names from here.
        model._dataset_meta = dict(classes=tuple(content['class_names']))
    return content


def load_backbone_weights(backbone: nn.Module, checkpoint: str,
                          ignore: Sequence[str] = ('csn.', )) -> List[str]:
    """Load a backbone checkpoint into a DTL backbone, weights-only.

    Accepts converted backbones (bare keys, e.g. from
    ``tools/model_converters/vit_npz_to_mmpretrain.py``) and full training
    checkpoints (``backbone.*`` keys, the rest ignored). Side-network keys are
    ignored: tasks bring their own.

    Args:
        backbone (nn.Module): The backbone to fill.
        checkpoint (str): Checkpoint path.
        ignore (Sequence[str]): Key prefixes not to load.

    Returns:
        list[str]: Keys of the checkpoint that the backbone did not use.
    """
    state = _backbone_state(safe_torch_load(checkpoint, map_location='cpu'))
    state = {k: v for k, v in state.items() if not k.startswith(tuple(ignore))}
    # A DTL backbone checks its trunk itself (TrunkMismatchError naming the
    # file, the keys and what to do); the checks below cover other modules.
    try:
        result = backbone.load_state_dict(copy.copy(state), strict=False)
    except RuntimeError as e:  # shape mismatches raise even with strict=False
        raise ValueError(f'Backbone checkpoint {checkpoint} does not fit the backbone: '
                         f'{e}') from None
    missing = [k for k in result.missing_keys if not k.startswith(tuple(ignore))]
    if missing and not getattr(backbone, 'allow_partial_trunk', False):
        raise ValueError(f'Backbone checkpoint {checkpoint} lacks {len(missing)} backbone '
                         f'tensors, e.g. {missing[:5]}; is it a checkpoint of this arch?')
    return list(result.unexpected_keys)
