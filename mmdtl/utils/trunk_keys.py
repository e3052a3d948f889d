"""Weights that do not fit a frozen trunk are errors, not warnings.

DTL never changes its backbone outside the side network (the *trunk*). A
checkpoint that leaves trunk tensors at their random initialisation (another
key layout: a timm or Google checkpoint, a task file, the wrong prefix) or
brings tensors of another shape (another arch or width) gives a model that
trains and evaluates without complaint, and is worthless. mmengine only warns
about such loads.

Every DTL backbone therefore checks what is loaded into it, whatever the
source (``init_cfg=dict(type='Pretrained')``, ``load_from``,
``tools/test.py CKPT``, ``--resume``, :func:`load_backbone_weights`): a
``load_state_dict`` pre-hook (see :func:`install_trunk_check`) compares the
incoming trunk keys and shapes with the backbone's, after the parent's own
pre-hooks (position-embedding and relative-position-table resizing, the
final-norm rename), checks that every tensor it loads into the trunk and the
side network is finite (no NaN, no inf), and raises :class:`TrunkMismatchError`
naming the file, the number of missing, mismatched and non-finite tensors, a
few of them and what to do.
Keys that legitimately differ are not trunk keys: the side network
(``csn.*``), the head and neck (outside the backbone), buffers recomputed at
build time (``relative_position_index``), unexpected extra keys.

The file is found through the loaded tensors themselves:
:func:`remember_checkpoint` (called by mmdtl's weights-only loader for every
checkpoint it reads) keeps weak references to them, so a pre-hook can tell
which file the tensors it receives came from without any global "current
file" state.

A backbone records where its trunk came from in ``trunk_source``;
:func:`check_trunks_loaded` (run by ``TrunkCheckHook`` when training starts)
refuses to train a frozen trunk that was never loaded, unless the backbone
was built with ``allow_random_trunk=True``.

A whole model loaded from a checkpoint that holds the trunk but no trained
side network (or nothing outside the backbone, i.e. no head) is fine to
fine-tune but predicts from untrained tensors: the first prediction (a
forward in eval mode before any training forward) logs one warning line
naming the file (see :func:`clear_untrained_load`).
"""
import logging
import re
import weakref
from collections import deque
from collections.abc import Mapping
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.logging import print_log

__all__ = [
    'TrunkMismatchError', 'TrunkNotLoadedError', 'UntrainedCheckpointError',
    'install_trunk_check', 'remember_checkpoint', 'check_trunk_state', 'check_trunks_loaded',
    'untrained_in_checkpoint', 'trunk_shapes', 'nonfinite_tensors', 'clear_untrained_load'
]

# Buffers a backbone recomputes from its config; a checkpoint need not hold them
# (Swin's relative-position-table resize even deletes them).
_DERIVED_BUFFERS = ('relative_position_index', )
_EXAMPLES = 3


class TrunkMismatchError(ValueError):
    """A checkpoint lacks trunk tensors of a frozen backbone, has other
    shapes or non-finite values."""


class TrunkNotLoadedError(RuntimeError):
    """Training would start on a frozen trunk that was never loaded."""


class UntrainedCheckpointError(ValueError):
    """A checkpoint to evaluate lacks the trained tensors (side network, head)."""


# ---------------------------------------------------------------------------
# Which file loaded tensors came from
# ---------------------------------------------------------------------------


class _Source:
    """A loaded checkpoint: its file, its keys and weak references to its tensors."""

    def __init__(self, filename: str, obj: Any, state: Mapping, kind: str):
        self.filename = filename
        self.kind = kind
        self.keys = [k for k in state if isinstance(k, str)]
        self.refs = {id(v): weakref.ref(v) for v in _tensors(obj)}

    def holds(self, tensor: torch.Tensor) -> bool:
        ref = self.refs.get(id(tensor))
        return ref is not None and ref() is tensor

    def alive(self) -> bool:
        return any(ref() is not None for ref in self.refs.values())


_SOURCES: deque = deque(maxlen=8)


def _tensors(obj: Any, depth: int = 3) -> List[torch.Tensor]:
    """The tensors of a loaded checkpoint (state dicts nest a level or two)."""
    if torch.is_tensor(obj):
        return [obj]
    if depth == 0 or not isinstance(obj, (Mapping, list, tuple)):
        return []
    values = obj.values() if isinstance(obj, Mapping) else obj
    return [t for v in values for t in _tensors(v, depth - 1)]


def _unwrap_checkpoint(obj: Any) -> Tuple[Mapping, str]:
    """The state dict of a loaded checkpoint and what kind of file it is."""
    if not isinstance(obj, Mapping):
        return {}, 'other'
    if obj.get('format') == 'mmdtl-task':
        return obj, 'task'
    for key in ('state_dict', 'model', 'module'):
        if isinstance(obj.get(key), Mapping):
            return obj[key], 'wrapped'
    return obj, 'plain'


def remember_checkpoint(obj: Any, filename: str) -> None:
    """Note that the tensors of ``obj`` (a loaded checkpoint) come from ``filename``.

    Only weak references are kept, so nothing is held in memory.
    """
    state, kind = _unwrap_checkpoint(obj)
    _SOURCES.appendleft(_Source(str(filename), obj, state, kind))


def _find_source(state: Mapping) -> Optional[_Source]:
    tensors = [v for v in state.values() if torch.is_tensor(v)]
    for tensor in tensors:
        for source in _SOURCES:
            if source.holds(tensor):
                return source
    if not tensors:
        # Nothing of the trunk arrived (another key layout): the checkpoint
        # being loaded is the newest one still in memory.
        return next((s for s in _SOURCES if s.alive()), None)
    return None


# ---------------------------------------------------------------------------
# The check
# ---------------------------------------------------------------------------


def new_output_norms(backbone: nn.Module) -> Tuple[str, ...]:
    """Key prefixes of the per-stage output norms a pre-trained classifier
    cannot have.

    mmpretrain's hierarchical backbones (Swin, ConvNeXt) build a norm
    ``norm{i}`` for every stage ``i`` of ``out_indices``; classification
    trains only the last stage's. Dense-prediction configs read earlier
    stages too (``out_indices=(0, 1, 2, 3)``), whose norms are new: they keep
    their initialisation (a LayerNorm without learnt affine, frozen; the
    trainable neck or head after them absorbs any affine map).
    """
    stages = getattr(backbone, 'stages', None)
    if not isinstance(stages, nn.ModuleList):
        return ()
    last = len(stages) - 1
    indices = {i % len(stages) for i in getattr(backbone, 'out_indices', ())
               if isinstance(i, int)}
    return tuple(f'norm{i}.' for i in sorted(indices) if i != last)


def trunk_shapes(backbone: nn.Module) -> Dict[str, torch.Size]:
    """State-dict entries of the frozen trunk (everything outside ``csn``)
    that a checkpoint must provide, with their shapes (the new per-stage
    output norms of :func:`new_output_norms` may be absent)."""
    return {
        k: v.shape
        for k, v in backbone.state_dict().items()
        if not k.startswith('csn.') and not k.endswith(_DERIVED_BUFFERS)
    }


def nonfinite_tensors(state: Mapping, keys: Optional[Iterable[str]] = None) -> List[str]:
    """The floating-point tensors of ``state`` that hold NaN or inf.

    Args:
        state (Mapping): Name -> tensor (other values are skipped).
        keys (Iterable[str], optional): The names to check. Defaults to all.

    Returns:
        list[str]: ``'name (n NaN, m inf)'`` for each, in ``keys`` order.
    """
    found = []
    for key in (state if keys is None else keys):
        value = state.get(key)
        if not torch.is_tensor(value) or value.is_meta or not (
                value.is_floating_point() or value.is_complex()):
            continue
        finite = torch.isfinite(value)
        if bool(finite.all()):
            continue
        nan = int(torch.isnan(value).sum())
        inf = int(finite.numel() - int(finite.sum())) - nan
        counts = [f'{n} {what}' for n, what in ((nan, 'NaN'), (inf, 'inf')) if n]
        found.append(f'{key} ({", ".join(counts)})')
    return found


def _examples(items: List[str]) -> str:
    more = ', ...' if len(items) > _EXAMPLES else ''
    return ', '.join(items[:_EXAMPLES]) + more


def _layout_hint(keys: Iterable[str], kind: str, prefix: str, missing: List[str],
                 mismatched: List[str]) -> str:
    """What the checkpoint looks like and how to make it fit."""
    keys = set(keys)

    def has(pattern: str) -> bool:
        return any(re.match(pattern, k) for k in keys)

    converters = 'tools/model_converters/'
    if kind == 'task':
        return ('It is an mmdtl task file (side network and head only): load it with '
                'mmdtl.engine.load_task_checkpoint, MultiTaskDTL or tools/multitask_infer.py '
                'on a model whose backbone comes from the pre-trained checkpoint.')
    if has(r'(.*/)?(Transformer/encoderblock|embedding/kernel)'):
        return ('It looks like Google\'s ViT (.npz) layout: convert it with '
                f'{converters}vit_npz_to_mmpretrain.py.')
    if has(r'(module\.)?lora_dict\.\d+\.lora_[AB]'):
        return ('It looks like a checkpoint of the released DTL code (timm keys, lora_dict): '
                f'convert it with {converters}official_dtl_to_mmdtl.py.')
    if has(r'(module\.)?layers[._]\d+\.blocks\.\d+\.'):
        return ('It looks like a Swin checkpoint of the official code or timm (layers.N.blocks'
                f'.M.*): convert it with {converters}swin_to_mmpretrain.py.')
    if has(r'(module\.)?blocks\.\d+\.(attn|mlp|norm1)\.'):
        return ('It looks like a timm ViT state dict (blocks.N.attn.*): convert it with '
                f'{converters}official_dtl_to_mmdtl.py --backbone-only (or Google\'s '
                f'original .npz with {converters}vit_npz_to_mmpretrain.py).')
    def mostly(names: List[str]) -> bool:  # renames (ln1 -> ln2) aside
        return bool(names) and sum(n in keys for n in names) >= len(names) / 2

    if not prefix and mostly([f'backbone.{k}' for k in missing]):
        return ('It is a classifier checkpoint (backbone.* keys): add prefix=\'backbone.\' to '
                'the init_cfg, e.g. init_cfg=dict(type=\'Pretrained\', checkpoint=..., '
                'prefix=\'backbone.\').')
    if prefix and mostly(missing):
        return ('It is a backbone-only checkpoint (keys without the \'{0}\' prefix): load '
                'it through the backbone, model.backbone.init_cfg=dict(type=\'Pretrained\', '
                'checkpoint=...), not load_from.'.format(prefix))
    if mismatched and not missing:
        return ('It is a checkpoint of another size: build the backbone with the '
                'checkpoint\'s arch, patch size and widths.')
    return (f'Is it a checkpoint of this arch in mmpretrain\'s key layout? Released weights '
            f'convert with {converters}.')


def check_trunk_state(backbone: nn.Module,
                      state_dict: Mapping,
                      prefix: str = '',
                      allow_partial: bool = False) -> Optional[str]:
    """Check that ``state_dict`` holds the whole trunk of ``backbone``, with
    finite values (the side network's too).

    Args:
        backbone (nn.Module): A DTL backbone.
        state_dict (Mapping): What is being loaded (keys under ``prefix``
            belong to the backbone).
        prefix (str): The backbone's prefix in ``state_dict`` (e.g.
            ``'backbone.'`` for a classifier). Defaults to ''.
        allow_partial (bool): Warn instead of raising (also for non-finite
            values). Defaults to False.

    Returns:
        str | None: The file the trunk came from (``'a state dict in memory'``
        when unknown), None when nothing was loaded into the trunk.

    Raises:
        TrunkMismatchError: Trunk tensors are missing or have other shapes,
            or trunk or side-network tensors hold NaN or inf.
    """
    required = trunk_shapes(backbone)
    local = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    new = new_output_norms(backbone)  # absent from classifiers; checked when present
    missing = [k for k in required if k not in local and not (new and k.startswith(new))]
    mismatched = [
        f'{k} {tuple(local[k].shape)} in the checkpoint vs {tuple(shape)} in the model'
        for k, shape in required.items()
        if k in local and torch.is_tensor(local[k]) and local[k].shape != shape
    ]
    # Values too: the trunk and the side network it brings (a run that diverged
    # writes both); a NaN is as fatal to a frozen trunk as a missing tensor.
    loaded = [k for k in local if k in required or k.startswith('csn.')]
    nonfinite = nonfinite_tensors(local, loaded)
    source = _find_source(local)
    filename = source.filename if source is not None else None
    if not missing and not mismatched and not nonfinite:
        return filename or 'a state dict in memory'

    where = f'model.{prefix[:-1]}' if prefix else 'the backbone'
    what = f'checkpoint {filename}' if filename else 'state dict being loaded'
    owner = f'{type(backbone).__name__} ({where})'
    fix = 'To load it anyway, set allow_partial_trunk=True in the backbone config.'
    if not missing and not mismatched:
        message = (f'The {what} holds non-finite values (NaN or inf) in {len(nonfinite)} of '
                   f'the {len(loaded)} tensors it loads into {owner}: {_examples(nonfinite)}. '
                   f'Training or predicting with them gives NaN. The file is damaged or was '
                   f'written by a run that diverged: re-convert or re-download it, or take an '
                   f'earlier checkpoint of that run. {fix}')
    else:
        problems = []
        if missing:
            problems.append(f'{len(missing)} of its {len(required)} tensors are missing '
                            f'({_examples(missing)})')
        if mismatched:
            of = '' if missing else f' of its {len(required)} tensors'
            problems.append(f'{len(mismatched)}{of} have another shape '
                            f'({_examples(mismatched)})')
        if nonfinite:
            problems.append(f'{len(nonfinite)} hold non-finite values (NaN or inf: '
                            f'{_examples(nonfinite)})')
        keys = source.keys if source is not None else list(state_dict)
        kind = source.kind if source is not None else 'plain'
        message = (f'The {what} does not fit the frozen trunk of {owner}: '
                   f'{" and ".join(problems)}. '
                   f'{_layout_hint(keys, kind, prefix, missing, mismatched)} A frozen trunk '
                   f'never recovers from weights that do not fit; to load a partial trunk on '
                   f'purpose, set allow_partial_trunk=True in the backbone config.')
    if not allow_partial:
        raise TrunkMismatchError(message)
    print_log(f'{message} (allow_partial_trunk=True: loading it anyway)', logger='current',
              level=30)
    return filename or 'a state dict in memory'


def _trunk_pre_hook(module: nn.Module, state_dict, prefix, *args, **kwargs) -> None:
    source = check_trunk_state(module, state_dict, prefix, module.allow_partial_trunk)
    if source is not None:
        module.trunk_source = source
    _note_untrained_load(module, state_dict, prefix)


# ---------------------------------------------------------------------------
# A model loaded without its trained side network or head
# ---------------------------------------------------------------------------


def _note_untrained_load(backbone: nn.Module, state_dict: Mapping, prefix: str) -> None:
    """Remember a whole-model load that brought the trunk but no trained side
    network (or nothing outside the backbone: no head).

    Only loads of a whole model count (``prefix``: the backbone is a part);
    a backbone loaded alone (``init_cfg``, :func:`load_backbone_weights`)
    gets its side network and head elsewhere. Such a model is right to
    fine-tune, so nothing is said at load time: the first forward in eval
    mode (a prediction) warns, a forward in train mode forgets it.
    """
    if not prefix or backbone.trunk_source is None:
        return
    csn = getattr(backbone, 'csn', None)
    csn_keys = [f'{prefix}csn.{n}' for n, _ in csn.named_parameters()] \
        if csn is not None else []
    no_csn = bool(csn_keys) and not any(k in state_dict for k in csn_keys)
    local = {k: v for k, v in state_dict.items() if k.startswith(prefix)}
    source = _find_source({k[len(prefix):]: v for k, v in local.items()})
    keys = [re.sub(r'^module\.', '', k) for k in source.keys] if source is not None else []
    no_head = source is not None and not any(
        not k.startswith((prefix, 'data_preprocessor.')) for k in keys)
    clear_untrained_load(backbone)
    if not no_csn and not no_head:
        return
    what = f'checkpoint {source.filename}' if source is not None else 'state dict loaded'
    if no_head:
        holds = (f'no trained side network ({prefix}csn.*) and no head' if no_csn
                 else 'nothing outside the backbone (no head)')
        effect = 'the head is randomly initialised and its predictions are meaningless'
    else:
        holds = f'no trained side network ({prefix}csn.*)'
        effect = ('the side network is randomly initialised (a no-op) and the head was not '
                  'trained with it: these are the pre-trained model\'s predictions, or '
                  'meaningless ones if the head did not fit')
    backbone._untrained_load = (
        f'Predicting with model.{prefix[:-1]} loaded from {what}, which holds the trunk but '
        f'{holds}: {effect}. Load the checkpoint training wrote (its work_dir\'s epoch_N.pth '
        f'or best_*.pth) or a task file (mmdtl.engine.load_task_checkpoint).')
    backbone._untrained_handle = backbone.register_forward_pre_hook(_untrained_forward_hook)


def _untrained_forward_hook(module: nn.Module, args) -> None:
    message = module.__dict__.get('_untrained_load')
    clear_untrained_load(module)  # once: trained from here on, or warned
    if message and not module.training:
        print_log(message, logger='current', level=logging.WARNING)


def clear_untrained_load(backbone: nn.Module) -> None:
    """Forget that ``backbone``'s model was loaded without its trained side
    network or head (e.g. a task file just brought them)."""
    backbone.__dict__.pop('_untrained_load', None)
    handle = backbone.__dict__.pop('_untrained_handle', None)
    if handle is not None:
        handle.remove()


def install_trunk_check(backbone: nn.Module, allow_random_trunk: bool = False,
                        allow_partial_trunk: bool = False) -> None:
    """Make every ``load_state_dict`` into ``backbone`` check its trunk.

    Call at the end of the backbone's ``__init__``: the pre-hook then runs
    after the parent's (position-embedding resizing, key renames).

    Args:
        backbone (nn.Module): A DTL backbone.
        allow_random_trunk (bool): Allow training a frozen trunk that was
            never loaded from a checkpoint.
        allow_partial_trunk (bool): Warn instead of raising when a
            checkpoint lacks trunk tensors or has other shapes.
    """
    backbone.allow_random_trunk = allow_random_trunk
    backbone.allow_partial_trunk = allow_partial_trunk
    backbone.trunk_source = None  # where the trunk was loaded from (None: random init)
    backbone._register_load_state_dict_pre_hook(_trunk_pre_hook, with_module=True)


def check_trunks_loaded(model: nn.Module) -> None:
    """Refuse a model whose frozen DTL trunk was never loaded from a checkpoint.

    Raises:
        TrunkNotLoadedError: Names the backbone and the option to set.
    """
    for name, module in model.named_modules():
        if not hasattr(module, 'allow_random_trunk') or module.trunk_source is not None:
            continue
        if module.allow_random_trunk or not getattr(module, 'freeze_backbone', True):
            continue
        raise TrunkNotLoadedError(
            f'The frozen trunk of {type(module).__name__} (model.{name or "backbone"}) was '
            f'never loaded from a checkpoint: no init_cfg=dict(type=\'Pretrained\', '
            f'checkpoint=...), no load_from, no --resume. Training would fit the side '
            f'network to a randomly initialised backbone that never changes. Load '
            f'pre-trained weights (converted by tools/model_converters/), or, for a '
            f'deliberate random-trunk control, set model.backbone.allow_random_trunk=True.')


def untrained_in_checkpoint(model: nn.Module, checkpoint: Any) -> Optional[str]:
    """Describe the trained tensors a checkpoint to evaluate does not provide.

    The tensors training changes (the parameters that require grad: side
    network, neck, head) must all be in a checkpoint that is evaluated; a
    pre-trained backbone or a classifier of another task leaves them random.

    Args:
        model (nn.Module): The model (a wrapper is unwrapped by its keys).
        checkpoint: The loaded checkpoint (``state_dict`` inside, or bare).

    Returns:
        str | None: The message of :class:`UntrainedCheckpointError`, None
        when the checkpoint has them all.
    """
    state = checkpoint
    if isinstance(checkpoint, Mapping) and isinstance(checkpoint.get('state_dict'), Mapping):
        state = checkpoint['state_dict']
    if not isinstance(state, Mapping):
        return None
    state = {re.sub(r'^module\.', '', k): v for k, v in state.items() if isinstance(k, str)}
    trained = {re.sub(r'^module\.', '', n): p.shape
               for n, p in model.named_parameters() if p.requires_grad}
    missing = [k for k in trained if k not in state]
    mismatched = [f'{k} {tuple(state[k].shape)} in the checkpoint vs {tuple(shape)} in the model'
                  for k, shape in trained.items()
                  if k in state and torch.is_tensor(state[k]) and state[k].shape != shape]
    if not missing and not mismatched:
        return None
    source = _find_source(state)
    what = f'checkpoint {source.filename}' if source is not None else 'checkpoint'
    problems = []
    if missing:
        problems.append(f'lacks {len(missing)} of the {len(trained)} trained tensors '
                        f'({_examples(missing)})')
    if mismatched:
        problems.append(f'has {len(mismatched)} with another shape ({_examples(mismatched)})')
    return (f'The {what} {" and ".join(problems)}: evaluating it would use randomly '
            f'initialised ones. Test a checkpoint written by training this config (its '
            f'work_dir\'s epoch_N.pth or best_*.pth), not a pre-trained backbone or another '
            f'task\'s classifier; to evaluate it anyway, set '
            f'default_hooks.trunk_check.check_test_checkpoint=False.')

