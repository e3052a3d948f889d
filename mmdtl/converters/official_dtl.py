"""Convert a checkpoint of the official DTL code to an mmdtl ``ImageClassifier``.

The official code (github ``heekhero/DTL``) trains a timm 0.5.4
``VisionTransformer`` with the side network as ``lora_dict`` and
``lora_fusion``. Its state dict (bare, or under ``'model'``,
``'state_dict'`` or, with ``use_ema``, ``'state_dict_ema'``; a DDP
``module.`` prefix is stripped) maps to the keys of
``mmpretrain.models.ImageClassifier`` with a ``DTLViT`` backbone
(``out_type='avg_featmap'``, ``final_norm=False``) and a ``LinearClsHead``::

    patch_embed.proj.{weight,bias}     -> backbone.patch_embed.projection.*
    cls_token, pos_embed               -> backbone.cls_token, backbone.pos_embed
    blocks.{i}.norm1.*                 -> backbone.layers.{i}.ln1.*
    blocks.{i}.attn.qkv.*              -> backbone.layers.{i}.attn.qkv.*
    blocks.{i}.attn.proj.*             -> backbone.layers.{i}.attn.proj.*
    blocks.{i}.norm2.*                 -> backbone.layers.{i}.ln2.*
    blocks.{i}.mlp.fc1.*               -> backbone.layers.{i}.ffn.layers.0.0.*
    blocks.{i}.mlp.fc2.*               -> backbone.layers.{i}.ffn.layers.1.*
    norm.*                             -> backbone.ln2.*  (normalises the pooled
                                          patch tokens, as in the official forward)
    head.{weight,bias}                 -> head.fc.*
    lora_dict.{i}.lora_A (rank, D)     -> backbone.csn.down_projs.{i}
    lora_dict.{i}.lora_B (D, rank)     -> backbone.csn.up_projs.{i}
    lora_fusion.weight (D, 1, k, k)    -> backbone.csn.dwconvs.0.weight  (DTL+ only)
    pre_logits.fc.*                    -> dropped (the DTL forward never uses it)

The tensors are copied unchanged: timm and mmpretrain share the fused
``qkv`` layout and the token order of the patch grid.

The checkpoint stores the rank, the tapped blocks (``--lora_before_blocks``)
and the DWConv kernel (``--fusion_size``); they are printed so the config's
``csn`` can be checked. The first add-back block ``csn.start`` (the first of
``--add_after_blocks``), ``beta`` and ``num_heads`` are *not* stored: take
them from the training command. ``verify_with_config`` (the script's
``--config``) builds the
classifier of an mmdtl config, compares its side network with the
checkpoint and loads the result with ``strict=True`` before writing.

``convert_backbone`` (``--backbone-only``) keeps only the frozen trunk, as the bare keys
of mmpretrain's ``VisionTransformer`` (``patch_embed.projection.*``,
``layers.{i}.*``, final norm ``ln1.*``; head and side network dropped), for
``model.backbone.init_cfg=dict(type='Pretrained', checkpoint=...)``. This
also converts a plain timm ViT state dict (no ``lora_*``), e.g. a checkpoint
passed by mistake where an mmpretrain backbone was expected.

The source is read with ``torch.load(weights_only=True)`` (only
``argparse.Namespace``, which timm's checkpoint saver stores, is allowed
besides tensors and containers); the output ``{'state_dict', 'meta'}`` is
written atomically and loads with ``weights_only=True``.

``tools/model_converters/official_dtl_to_mmdtl.py`` is the command line of this module.
"""
import argparse
import os.path as osp
import re
from typing import Dict, Mapping, Optional, Tuple

import torch

from mmdtl.utils import (
    UnreadableCheckpointError,
    UnsafeCheckpointError,
    safe_torch_load,
)

from .errors import ConversionError

# (official key pattern, mmdtl key template), matched against whole keys.
KEY_MAP = [
    (r'patch_embed\.proj\.(weight|bias)', r'backbone.patch_embed.projection.\1'),
    (r'cls_token', 'backbone.cls_token'),
    (r'pos_embed', 'backbone.pos_embed'),
    (r'blocks\.(\d+)\.norm1\.(weight|bias)', r'backbone.layers.\1.ln1.\2'),
    (r'blocks\.(\d+)\.attn\.qkv\.(weight|bias)', r'backbone.layers.\1.attn.qkv.\2'),
    (r'blocks\.(\d+)\.attn\.proj\.(weight|bias)', r'backbone.layers.\1.attn.proj.\2'),
    (r'blocks\.(\d+)\.norm2\.(weight|bias)', r'backbone.layers.\1.ln2.\2'),
    (r'blocks\.(\d+)\.mlp\.fc1\.(weight|bias)', r'backbone.layers.\1.ffn.layers.0.0.\2'),
    (r'blocks\.(\d+)\.mlp\.fc2\.(weight|bias)', r'backbone.layers.\1.ffn.layers.1.\2'),
    (r'norm\.(weight|bias)', r'backbone.ln2.\1'),
    (r'head\.(weight|bias)', r'head.fc.\1'),
    (r'lora_dict\.(\d+)\.lora_A', r'backbone.csn.down_projs.\1'),
    (r'lora_dict\.(\d+)\.lora_B', r'backbone.csn.up_projs.\1'),
    (r'lora_fusion\.weight', 'backbone.csn.dwconvs.0.weight'),
]
DROPPED = r'pre_logits\.fc\.(weight|bias)'
UNSUPPORTED = {
    'dist_token': 'distilled (DeiT) models are not supported',
    'head_dist.weight': 'distilled (DeiT) models are not supported',
    'patch_embed.backbone': 'hybrid ResNet+ViT models are not supported',
}
WRAPPERS = ('model', 'state_dict')
EMA_WRAPPERS = ('state_dict_ema', 'model_ema')


def load_official(path: str, use_ema: bool = False) -> Dict[str, torch.Tensor]:
    """Load the official state dict safely and unwrap it.

    Args:
        path (str): The official checkpoint (``.pth``).
        use_ema (bool): Take the EMA weights (``state_dict_ema`` or
            ``model_ema``) instead of the model's. Defaults to False.

    Returns:
        dict[str, Tensor]: The bare state dict (DDP ``module.`` stripped).

    Raises:
        ConversionError: The file is missing, unsafe, unreadable or not a
            state dict of tensors; the message names it.
    """
    if not osp.isfile(path):
        raise ConversionError(f'{path}: no such file')
    try:
        # timm's checkpoint saver stores its argparse.Namespace: plain data.
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = safe_torch_load(path, map_location='cpu')
    except (UnsafeCheckpointError, UnreadableCheckpointError) as err:
        # Both name the file and what is wrong (the refused global, the size).
        hint = (' Re-save its state dict with torch.save(model.state_dict(), ...) where it '
                'is trusted.' if isinstance(err, UnsafeCheckpointError) else '')
        raise ConversionError(f'{err}{hint}') from None
    except OSError as err:
        raise ConversionError(f'{path} is not a readable torch checkpoint ({err})') from err
    if not isinstance(obj, Mapping):
        raise ConversionError(f'{path}: expected a state dict, got {type(obj).__name__}')
    wrappers = EMA_WRAPPERS if use_ema else WRAPPERS
    for key in wrappers:
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    else:
        if use_ema:
            raise ConversionError(f'{path}: --use-ema given but there is no '
                                  f'{" or ".join(EMA_WRAPPERS)} entry')
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ConversionError(f'{path}: expected a state dict of tensors (optionally under '
                              f'{"/".join(WRAPPERS)}), found non-tensor entries {bad[:8]}')
    state_dict = dict(obj)
    # DistributedDataParallel prefixes every key with "module.".
    if state_dict and all(k.startswith('module.') for k in state_dict):
        state_dict = {k[len('module.'):]: v for k, v in state_dict.items()}
    return state_dict


def _map_key(key: str) -> Optional[str]:
    for pattern, template in KEY_MAP:
        match = re.fullmatch(pattern, key)
        if match:
            return match.expand(template)
    return None


def convert_official(state_dict: Mapping[str, torch.Tensor],
                     src: str = '<checkpoint>') -> Tuple[Dict[str, torch.Tensor], dict]:
    """Rename an official DTL state dict to mmdtl ``ImageClassifier`` keys.

    Args:
        state_dict (Mapping[str, Tensor]): From :func:`load_official`.
        src (str): Name of the source, used in error messages.

    Returns:
        tuple[dict, dict]: The state dict and ``meta`` with what was detected
        (rank, taps, dwconv_kernel, sizes, number of classes).
    """
    if any(k.startswith(('backbone.csn.', 'backbone.layers.')) for k in state_dict):
        raise ConversionError(f'{src} already has mmpretrain/mmdtl keys (backbone.*); '
                              f'load it directly')
    lora = {k for k in state_dict if k.startswith('lora_')}
    if not any(k.startswith('lora_dict.') for k in lora):
        what = ('a plain timm ViT (no lora_dict.*): convert it with --backbone-only'
                if 'blocks.0.attn.qkv.weight' in state_dict else
                'an unknown key layout')
        sample = ', '.join(sorted(state_dict)[:6]) or 'none'
        raise ConversionError(f'{src}: not an official DTL checkpoint, it looks like {what} '
                              f'(keys: {sample}, ...)')
    for key, reason in UNSUPPORTED.items():
        if any(k == key or k.startswith(key + '.') for k in state_dict):
            raise ConversionError(f'{src}: {reason} ({key})')

    converted, dropped, unknown = {}, [], []
    for key, value in state_dict.items():
        new_key = _map_key(key)
        if new_key is not None:
            converted[new_key] = value.detach().clone().contiguous()
        elif re.fullmatch(DROPPED, key):
            dropped.append(key)
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError(f'{src}: {len(unknown)} keys of an unknown layout: '
                              f'{", ".join(sorted(unknown)[:8])}')
    meta = _inspect(state_dict, src)
    meta['dropped'] = sorted(dropped)
    return converted, meta


def convert_backbone(state_dict: Mapping[str, torch.Tensor],
                     src: str = '<checkpoint>') -> Tuple[Dict[str, torch.Tensor], dict]:
    """The frozen trunk of a timm ViT (plain, or the released DTL code's) as
    the bare keys of mmpretrain's ``VisionTransformer`` (final norm ``ln1``),
    for ``init_cfg=dict(type='Pretrained', checkpoint=...)``; the head, the
    side network and ``pre_logits`` are dropped.

    Args:
        state_dict (Mapping[str, Tensor]): From :func:`load_official`.
        src (str): Name of the source, used in error messages.

    Returns:
        tuple[dict, dict]: The state dict and ``meta`` (arch, sizes, dropped keys).
    """
    if any(k.startswith(('backbone.', 'layers.')) for k in state_dict):
        raise ConversionError(f'{src} already has mmpretrain/mmdtl keys; load it directly')
    for key, reason in UNSUPPORTED.items():
        if any(k == key or k.startswith(key + '.') for k in state_dict):
            raise ConversionError(f'{src}: {reason} ({key})')
    trunk = {k: v for k, v in state_dict.items()
             if not k.startswith(('lora_', 'head.')) and not re.fullmatch(DROPPED, k)}
    dropped = sorted(set(state_dict) - set(trunk))
    # _inspect checks the blocks; a stand-in head and side network satisfy its
    # checks of parts the trunk does not have.
    dims = trunk['cls_token'].shape[-1] if 'cls_token' in trunk else 1
    probe = dict(trunk, **{'head.weight': torch.zeros(1, dims), 'head.bias': torch.zeros(1),
                           'lora_dict.0.lora_A': torch.zeros(1, dims),
                           'lora_dict.0.lora_B': torch.zeros(dims, 1)})
    meta = _inspect(probe, src)
    converted, unknown = {}, []
    for key, value in trunk.items():
        new_key = _map_key(key)
        if new_key is None:
            unknown.append(key)
            continue
        new_key = new_key[len('backbone.'):]
        # DTL's classifier keeps the final norm as ln2; the parent names it ln1.
        new_key = re.sub(r'^ln2\.', 'ln1.', new_key)
        converted[new_key] = value.detach().clone().contiguous()
    if unknown:
        raise ConversionError(f'{src}: {len(unknown)} keys of an unknown layout: '
                              f'{", ".join(sorted(unknown)[:8])}')
    meta = {k: meta[k] for k in ('arch', 'patch_size', 'img_size', 'qkv_bias')}
    meta['dropped'] = dropped
    return converted, meta


def _inspect(sd: Mapping[str, torch.Tensor], src: str) -> dict:
    """Detect the architecture and the side network, and check consistency."""
    required = ['patch_embed.proj.weight', 'cls_token', 'pos_embed', 'norm.weight',
                'head.weight', 'head.bias']
    missing = [k for k in required if k not in sd]
    if missing:
        raise ConversionError(f'{src}: missing {missing}; a full official DTL state dict '
                              f'(frozen backbone included) is needed')
    embed_dims = sd['cls_token'].shape[-1]
    blocks = sorted({int(m.group(1)) for k in sd for m in [re.match(r'blocks\.(\d+)\.', k)]
                     if m})
    if blocks != list(range(len(blocks))) or not blocks:
        raise ConversionError(f'{src}: transformer blocks {blocks} are not 0..n-1')
    parts = ('norm1.weight', 'norm1.bias', 'attn.qkv.weight', 'attn.proj.weight',
             'attn.proj.bias', 'norm2.weight', 'norm2.bias', 'mlp.fc1.weight', 'mlp.fc1.bias',
             'mlp.fc2.weight', 'mlp.fc2.bias')
    missing = [f'blocks.{i}.{p}' for i in blocks for p in parts if f'blocks.{i}.{p}' not in sd]
    if missing:
        raise ConversionError(f'{src}: missing block weights {missing[:8]}')

    taps = sorted({int(m.group(1)) for k in sd
                   for m in [re.fullmatch(r'lora_dict\.(\d+)\.lora_[AB]', k)] if m})
    ranks = set()
    for i in taps:
        down, up = sd.get(f'lora_dict.{i}.lora_A'), sd.get(f'lora_dict.{i}.lora_B')
        if down is None or up is None:
            raise ConversionError(f'{src}: lora_dict.{i} needs both lora_A and lora_B')
        if (down.dim() != 2 or up.dim() != 2 or down.shape[1] != embed_dims
                or tuple(up.shape) != (embed_dims, down.shape[0])):
            raise ConversionError(
                f'{src}: lora_dict.{i} has lora_A {tuple(down.shape)} and lora_B '
                f'{tuple(up.shape)}; expected (rank, {embed_dims}) and ({embed_dims}, rank)')
        ranks.add(down.shape[0])
    if len(ranks) != 1:
        raise ConversionError(f'{src}: the side network uses one rank for every tap, found '
                              f'ranks {sorted(ranks)}')
    bad_taps = [t for t in taps if t not in blocks]
    if bad_taps:
        raise ConversionError(f'{src}: lora_dict taps {bad_taps} name no block')

    dwconv_kernel = 0
    if 'lora_fusion.weight' in sd:
        fusion = sd['lora_fusion.weight']
        if (fusion.dim() != 4 or tuple(fusion.shape[:2]) != (embed_dims, 1)
                or fusion.shape[2] != fusion.shape[3] or fusion.shape[2] % 2 == 0):
            raise ConversionError(f'{src}: lora_fusion.weight {tuple(fusion.shape)} is not a '
                                  f'depthwise odd k x k conv of {embed_dims} channels')
        dwconv_kernel = int(fusion.shape[2])

    proj = sd['patch_embed.proj.weight']
    num_tokens = sd['pos_embed'].shape[1]
    grid = int(round((num_tokens - 1)**0.5))
    return dict(
        arch=dict(embed_dims=int(embed_dims), num_layers=len(blocks),
                  feedforward_channels=int(sd['blocks.0.mlp.fc1.weight'].shape[0])),
        patch_size=int(proj.shape[-1]),
        img_size=grid * int(proj.shape[-1]) if grid * grid == num_tokens - 1 else None,
        qkv_bias='blocks.0.attn.qkv.bias' in sd,
        rank=int(ranks.pop()),
        taps=taps,
        dwconv_kernel=dwconv_kernel,
        num_classes=int(sd['head.weight'].shape[0]),
    )


def describe(meta: dict) -> str:
    """What :func:`convert_official` found, as indented lines to print.

    Args:
        meta (dict): The ``meta`` returned by :func:`convert_official`.

    Returns:
        str: The architecture, the side network as a ``csn=dict(...)`` line,
        the head, and what the checkpoint does not store.
    """
    taps = meta['taps']
    contiguous = taps == list(range(taps[0], taps[-1] + 1))
    taps_text = f'{taps[0]}-{taps[-1]}' if contiguous and len(taps) > 1 else str(taps)
    conv = (f'yes, kernel {meta["dwconv_kernel"]} (DTL+)'
            if meta['dwconv_kernel'] else 'no (plain DTL)')
    lines = [
        f'backbone: {meta["arch"]}, patch_size={meta["patch_size"]}, '
        f'img_size={meta["img_size"]}, qkv_bias={meta["qkv_bias"]}',
        f'side network: rank={meta["rank"]}, taps={taps_text} (--lora_before_blocks), '
        f'DWConv: {conv}',
        f'  -> csn=dict(rank={meta["rank"]}, taps={taps}, '
        f'dwconv_kernel={meta["dwconv_kernel"]}, ...)',
        f'head: {meta["num_classes"]} classes',
        'not stored in the checkpoint, check them in the config: csn.start (the first of '
        '--add_after_blocks), csn.beta (--beta), num_heads',
    ]
    if meta['dropped']:
        lines.append(f'dropped (unused by the DTL forward): {", ".join(meta["dropped"])}')
    return '\n'.join('  ' + line for line in lines)


def verify_with_config(state_dict: Mapping[str, torch.Tensor], meta: dict,
                       config: str) -> None:
    """Build the classifier of ``config`` and load ``state_dict`` strictly.

    Args:
        state_dict (Mapping[str, Tensor]): From :func:`convert_official`.
        meta (dict): Its ``meta``; rank, taps and kernel must match the
            config's ``csn``.
        config (str): Path of an mmdtl classification config.

    Raises:
        ConversionError: The config has no side network, its ``csn``
            differs from the checkpoint, or the keys do not load strictly.
    """
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmpretrain.models import build_classifier

    cfg = Config.fromfile(config)  # its custom_imports register mmdtl
    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    cfg.model.backbone.init_cfg = None  # do not read the pre-trained backbone file
    model = build_classifier(cfg.model)
    csn = getattr(model.backbone, 'csn', None)
    if csn is None:
        raise ConversionError(f'{config}: the backbone {cfg.model.backbone.type} has no '
                              f'side network (csn)')
    problems = [f'csn.{name}={value} but the checkpoint has {meta[name]}'
                for name, value in (('rank', csn.rank), ('taps', csn.taps),
                                    ('dwconv_kernel', csn.dwconv_kernel))
                if value != meta[name]]
    if problems:
        raise ConversionError(f'{config} does not match the checkpoint: '
                              + '; '.join(problems))
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        raise ConversionError(f'{config}: the converted weights do not load with '
                              f'strict=True:\n{err}') from err
    print(f'  config check: {config} loads the converted weights with strict=True '
          f'(csn.start={csn.start}, beta={csn.beta}: compare with --add_after_blocks '
          f'and --beta)')
