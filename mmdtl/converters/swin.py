"""Convert Swin Transformer checkpoints to mmpretrain's SwinTransformer.

Two source layouts are detected from where the patch-merging layers sit:

* ``official``: microsoft/Swin-Transformer releases (e.g.
  ``swin_base_patch4_window7_224_22k.pth``, used by DTL) and timm < 0.9,
  with the merging at the *end* of stage ``s``: ``layers.{s}.downsample``
  for ``s = 0 .. n-2``;
* ``timm``: timm >= 0.9, with the merging at the *start* of the next stage:
  ``layers.{s}.downsample`` for ``s = 1 .. n-1``. timm's flattened feature
  models name the stages ``layers_{s}``; both spellings are accepted.

With ``S`` the mmpretrain stage and ``B = layers.{s}.blocks.{b}.``::

    patch_embed.proj.*           -> patch_embed.projection.*
    patch_embed.norm.*           -> patch_embed.norm.*
    absolute_pos_embed           -> absolute_pos_embed
    B norm1.*, B norm2.*         -> stages.{s}.blocks.{b}.norm1.*, .norm2.*
    B attn.qkv.*, B attn.proj.*  -> stages.{s}.blocks.{b}.attn.w_msa.qkv.*, .proj.*
    B attn.relative_position_bias_table
                                 -> stages.{s}.blocks.{b}.attn.w_msa.relative_position_bias_table
    B mlp.fc1.*, B mlp.fc2.*     -> stages.{s}.blocks.{b}.ffn.layers.0.0.*, .ffn.layers.1.*
    layers.{S or S+1}.downsample.reduction.weight, .norm.*
                                 -> stages.{S}.downsample.reduction.weight, .norm.*
                                    (input channels reordered, see below)
    norm.*                       -> norm{n-1}.* (the norm of the last stage)
    head.* / head.fc.*           -> dropped; with keep_head head.fc.* (LinearClsHead)
    B attn.relative_position_index, B attn_mask
                                 -> dropped (buffers)

The ``relative_position_index`` buffer is a function of the window size
only; mmpretrain keeps it in its state dict, so the converter writes it
freshly computed (the released formula, which equals mmpretrain's) instead
of trusting the copy in the file; timm >= 0.9 files do not have it.

Patch merging: the official code (and timm) concatenates the 2x2
neighbours as ``x0, x1, x2, x3 = x[0::2, 0::2], x[1::2, 0::2],
x[0::2, 1::2], x[1::2, 1::2]``, i.e. feature ``k * C + c`` with
``k = dh + 2 * dw``. mmcv's ``PatchMerging`` uses ``nn.Unfold``, whose
feature ``c * 4 + k'`` has ``k' = 2 * dh + dw``. So the new input feature
``c * 4 + k'`` is the old feature ``perm[k'] * C + c`` with
``perm = [0, 2, 1, 3]``; the LayerNorm over the 4C features is permuted the
same way.

The source is read with ``torch.load(weights_only=True)`` (a bare state
dict or one under ``'model'`` / ``'state_dict'``; a DDP ``module.`` prefix
is stripped). The output ``{'state_dict', 'meta'}`` is written atomically
and loads with ``weights_only=True``; ``meta`` holds the detected
mmpretrain ``arch``, window and patch size.

``tools/model_converters/swin_to_mmpretrain.py`` is the command line of this module.
"""
import math
import os.path as osp
import re
from collections import OrderedDict
from typing import Dict, Mapping, Tuple

import torch

from mmdtl.utils import (
    UnreadableCheckpointError,
    UnsafeCheckpointError,
    safe_torch_load,
)

from .errors import ConversionError

# (pattern of the key inside a block ``layers.{s}.blocks.{b}.``, mmpretrain name)
BLOCK_MAP = [
    (r'norm1\.(weight|bias)', r'norm1.\1'),
    (r'attn\.qkv\.(weight|bias)', r'attn.w_msa.qkv.\1'),
    (r'attn\.proj\.(weight|bias)', r'attn.w_msa.proj.\1'),
    (r'attn\.relative_position_bias_table', 'attn.w_msa.relative_position_bias_table'),
    (r'norm2\.(weight|bias)', r'norm2.\1'),
    (r'mlp\.fc1\.(weight|bias)', r'ffn.layers.0.0.\1'),
    (r'mlp\.fc2\.(weight|bias)', r'ffn.layers.1.\1'),
]
BLOCK_DROPPED = r'attn\.relative_position_index|attn_mask'
TOP_MAP = [
    (r'patch_embed\.proj\.(weight|bias)', r'patch_embed.projection.\1'),
    (r'patch_embed\.norm\.(weight|bias)', r'patch_embed.norm.\1'),
    (r'absolute_pos_embed', 'absolute_pos_embed'),
]
HEAD = r'head\.(?:fc\.)?(weight|bias)'
FINAL_NORM = r'norm\.(weight|bias)'
DOWNSAMPLE = r'layers\.(\d+)\.downsample\.(reduction\.weight|norm\.weight|norm\.bias)'
BLOCK = r'layers\.(\d+)\.blocks\.(\d+)\.(.+)'
# Unfold feature k' = 2 * dh + dw reads the official neighbour k = dh + 2 * dw.
UNFOLD_PERM = [0, 2, 1, 3]
ZOO = {  # mmpretrain SwinTransformer.arch_zoo
    'tiny': (96, (2, 2, 6, 2), (3, 6, 12, 24)),
    'small': (96, (2, 2, 18, 2), (3, 6, 12, 24)),
    'base': (128, (2, 2, 18, 2), (4, 8, 16, 32)),
    'large': (192, (2, 2, 18, 2), (6, 12, 24, 48)),
}


def unfold_reduction_order(weight: torch.Tensor) -> torch.Tensor:
    """Reorder the input features of the merging ``reduction`` (out, 4C)
    from the official concatenation to mmcv's ``nn.Unfold`` order.

    Args:
        weight (Tensor): The official ``downsample.reduction.weight``.

    Returns:
        Tensor: The weight for mmcv's ``PatchMerging``.
    """
    out_channels, in_channels = weight.shape
    weight = weight.reshape(out_channels, 4, in_channels // 4)[:, UNFOLD_PERM]
    return weight.transpose(1, 2).reshape(out_channels, in_channels).contiguous()


def unfold_norm_order(param: torch.Tensor) -> torch.Tensor:
    """The same reordering for the merging LayerNorm's (4C,) weight / bias.

    Args:
        param (Tensor): The official ``downsample.norm`` weight or bias.

    Returns:
        Tensor: The parameter in ``nn.Unfold`` order.
    """
    return param.reshape(4, -1)[UNFOLD_PERM].transpose(0, 1).reshape(-1).contiguous()


def relative_position_index(window: int) -> torch.Tensor:
    """The (window**2, window**2) bias-table index of the released code.

    Args:
        window (int): The window size.

    Returns:
        Tensor: Row index into the relative position bias table per pair.
    """
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window),
                                        indexing='ij')).flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return relative[:, :, 0] * (2 * window - 1) + relative[:, :, 1]


def load_checkpoint(path: str) -> Dict[str, torch.Tensor]:
    """Read a state dict with ``weights_only=True`` and unwrap it.

    Args:
        path (str): A Swin checkpoint (bare, or under ``model`` /
            ``state_dict``; a DDP ``module.`` prefix is stripped).

    Returns:
        dict[str, Tensor]: The state dict.

    Raises:
        ConversionError: The file is missing, unsafe, unreadable or not a
            state dict of tensors; the message names it.
    """
    if not osp.isfile(path):
        raise ConversionError(f'{path}: no such file')
    try:
        ckpt = safe_torch_load(path, map_location='cpu')
    except (UnsafeCheckpointError, UnreadableCheckpointError) as err:
        # Both name the file and what is wrong (the refused global, the size).
        raise ConversionError(f'{err} Expected a Swin checkpoint holding tensors (state '
                              f'dict, or one under "model").') from None
    except OSError as err:
        raise ConversionError(f'{path} cannot be read ({err})') from err
    for key in ('model', 'state_dict'):
        if isinstance(ckpt, Mapping) and isinstance(ckpt.get(key), Mapping):
            ckpt = ckpt[key]
            break
    if not isinstance(ckpt, Mapping) or not ckpt:
        raise ConversionError(f'{path}: expected a (non-empty) state dict, got '
                              f'{type(ckpt).__name__}')
    bad = [k for k, v in ckpt.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise ConversionError(f'{path}: entries {bad[:5]} are not tensors; expected a state dict')
    if all(k.startswith('module.') for k in ckpt):
        ckpt = {k[len('module.'):]: v for k, v in ckpt.items()}
    return dict(ckpt)


def _detect_layout(keys, src: str) -> Tuple[str, int]:
    """Return ('official' | 'timm', number of stages)."""
    stages = {int(m.group(1)) for k in keys for m in [re.fullmatch(BLOCK, k)] if m}
    if not stages:
        sample = ', '.join(sorted(keys)[:6])
        raise ConversionError(
            f'{src}: unknown key layout, no Swin blocks "layers.<s>.blocks.<b>.*" found '
            f'(keys: {sample}, ...); expected an official microsoft/Swin-Transformer or timm '
            f'Swin checkpoint')
    num_stages = max(stages) + 1
    if stages != set(range(num_stages)):
        raise ConversionError(f'{src}: stages {sorted(set(range(num_stages)) - stages)} '
                              f'have no blocks')
    merging = {int(m.group(1)) for k in keys for m in [re.fullmatch(DOWNSAMPLE, k)] if m}
    if merging == set(range(num_stages - 1)):
        return 'official', num_stages
    if merging == set(range(1, num_stages)):
        return 'timm', num_stages
    raise ConversionError(
        f'{src}: unknown Swin layout: patch merging ("layers.<s>.downsample") in stages '
        f'{sorted(merging)} of {num_stages}; expected stages 0..{num_stages - 2} (official, '
        f'merging at the end of a stage) or 1..{num_stages - 1} (timm >= 0.9, at the start)')


def convert_swin(state_dict: Mapping[str, torch.Tensor],
                 src: str = '<state_dict>',
                 keep_head: bool = False) -> Tuple[Dict[str, torch.Tensor], dict]:
    """Map official / timm Swin keys to mmpretrain SwinTransformer keys.

    Args:
        state_dict (Mapping[str, Tensor]): The source state dict.
        src (str): Name of the source, used in error messages and ``meta``.
        keep_head (bool): Keep the classification head as ``head.fc.*``
            (mmpretrain ``LinearClsHead``). Defaults to False.

    Returns:
        tuple[dict, dict]: The state dict and ``meta`` (layout, arch, sizes).
    """
    weights = {re.sub(r'^layers_(\d+)\.', r'layers.\1.', k): v for k, v in state_dict.items()}
    layout, num_stages = _detect_layout(weights.keys(), src)
    out = OrderedDict()
    unknown, head = [], {}
    depths = [0] * num_stages
    stage_dims, num_heads, windows = [None] * num_stages, [None] * num_stages, set()

    def take(pattern_map, key, prefix=''):
        for pattern, template in pattern_map:
            if re.fullmatch(pattern, key):
                return prefix + re.sub(pattern, template, key)
        return None

    for key, value in weights.items():
        if (new := take(TOP_MAP, key)) is not None:
            out[new] = value
        elif m := re.fullmatch(FINAL_NORM, key):
            out[f'norm{num_stages - 1}.{m.group(1)}'] = value
        elif m := re.fullmatch(HEAD, key):
            head[m.group(1)] = value
        elif m := re.fullmatch(DOWNSAMPLE, key):
            stage = int(m.group(1)) - (layout == 'timm')
            name = m.group(2)
            value = (unfold_reduction_order(value) if name == 'reduction.weight'
                     else unfold_norm_order(value))
            out[f'stages.{stage}.downsample.{name}'] = value
        elif m := re.fullmatch(BLOCK, key):
            stage, block, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            depths[stage] = max(depths[stage], block + 1)
            if re.fullmatch(BLOCK_DROPPED, rest):
                continue
            new = take(BLOCK_MAP, rest, prefix=f'stages.{stage}.blocks.{block}.')
            if new is None:
                unknown.append(key)
                continue
            out[new] = value
            if rest == 'norm1.weight':
                stage_dims[stage] = value.shape[0]
            elif rest == 'attn.relative_position_bias_table':
                num_heads[stage] = value.shape[1]
                side = math.isqrt(value.shape[0])
                if side * side != value.shape[0] or side % 2 == 0:
                    raise ConversionError(f'{src}: "{key}" has {value.shape[0]} rows, not '
                                          f'(2 * window - 1)**2 of a square window')
                windows.add((side + 1) // 2)
                out[new.replace('bias_table', 'index')] = relative_position_index(
                    (side + 1) // 2)
        else:
            unknown.append(key)
    if unknown:
        raise ConversionError(
            f'{src}: {len(unknown)} keys are not part of the {layout} Swin layout and would '
            f'be lost: {", ".join(unknown[:8])}{", ..." if len(unknown) > 8 else ""}')

    if 'patch_embed.projection.weight' not in out or None in stage_dims or None in num_heads:
        raise ConversionError(f'{src}: incomplete Swin checkpoint (patch embedding, norm1 or '
                              f'relative position tables missing)')
    if len(windows) != 1:
        raise ConversionError(f'{src}: blocks use different window sizes {sorted(windows)}')
    for stage in range(num_stages - 1):  # the merging must map C_s -> C_{s+1}
        shape = tuple(out[f'stages.{stage}.downsample.reduction.weight'].shape)
        if shape != (stage_dims[stage + 1], 4 * stage_dims[stage]):
            raise ConversionError(
                f'{src}: patch merging after stage {stage} has shape {shape}, expected '
                f'({stage_dims[stage + 1]}, {4 * stage_dims[stage]}) for the {layout} layout')
    if keep_head:
        if 'weight' not in head:
            raise ConversionError(f'{src}: --keep-head given but there is no head')
        out.update({f'head.fc.{name}': value for name, value in head.items()})

    embed_dims = int(stage_dims[0])
    arch = dict(embed_dims=embed_dims, depths=depths, num_heads=[int(h) for h in num_heads])
    zoo = [name for name, (dims, d, h) in ZOO.items()
           if (dims, list(d), list(h)) == (embed_dims, depths, arch['num_heads'])]
    patch = out['patch_embed.projection.weight'].shape[-2:]
    meta = dict(
        source=osp.basename(src),
        converter='swin_to_mmpretrain',
        layout=layout,
        arch=zoo[0] if zoo else arch,
        arch_settings=arch,
        window_size=windows.pop(),
        patch_size=int(patch[0]) if patch[0] == patch[1] else tuple(int(p) for p in patch),
        use_abs_pos_embed='absolute_pos_embed' in out,
        head=dict(num_classes=int(head['weight'].shape[0]) if 'weight' in head else None,
                  kept=keep_head),
    )
    return out, meta
