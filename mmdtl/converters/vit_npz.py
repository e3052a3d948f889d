"""Convert Google's ViT ``.npz`` checkpoints to mmpretrain's VisionTransformer.

The ImageNet-21k ``ViT-B_16.npz`` used by DTL (and the other checkpoints of
``google-research/vision_transformer`` and ``big_vision``) store flax
parameters under ``/``-separated names. ``P`` is the detected prefix (``''``,
``'opt/target/'``, ``'params/'``, ...), ``E = P + 'Transformer/'`` and
``B = E + 'encoderblock_{i}/'``::

    P embedding/kernel (ph, pw, C, D), bias  -> patch_embed.projection.weight
                                                (D, C, ph, pw), .bias
    P cls (1, 1, D)                          -> cls_token
    E posembed_input/pos_embedding (1, N, D) -> pos_embed
    B LayerNorm_0/scale, bias                -> layers.{i}.ln1.weight, .bias
    B MultiHeadDotProductAttention_1/
        {query,key,value}/kernel (D, h, hd)  -> layers.{i}.attn.qkv.weight
                                                (3*h*hd, D), q|k|v stacked
        {query,key,value}/bias (h, hd)       -> layers.{i}.attn.qkv.bias
        out/kernel (h, hd, D), bias          -> layers.{i}.attn.proj.weight, .bias
    B LayerNorm_2/scale, bias                -> layers.{i}.ln2.weight, .bias
    B MlpBlock_3/Dense_0/kernel (D, F), bias -> layers.{i}.ffn.layers.0.0.weight, .bias
    B MlpBlock_3/Dense_1/kernel (F, D), bias -> layers.{i}.ffn.layers.1.weight, .bias
    E encoder_norm/scale, bias               -> ln1.weight, .bias (final norm)
    P head/kernel (D, K), bias               -> dropped; with keep_head
                                                head.fc.* (LinearClsHead) or
                                                head.layers.head.* (VisionTransformerClsHead)
    P pre_logits/kernel, bias                -> dropped; with keep_head and
                                                VisionTransformerClsHead
                                                head.layers.pre_logits.*

Flax dense kernels are (in, out) and torch linear weights (out, in), hence the
transposes. ``big_vision`` names the block modules ``LayerNorm_0/1``,
``MultiHeadDotProductAttention_0`` and ``MlpBlock_0``, may keep the position
embedding at ``P pos_embedding`` and may stack all blocks along a leading
axis under ``E encoderblock/`` (``scan``); all of these are detected.
Arrays outside ``P`` (optimizer state of training checkpoints) are ignored;
any other unknown array is an error rather than a silent loss.
Models without a cls token (``gap``) convert without ``cls_token``; build
them with ``with_cls_token=False``.

The output is ``{'state_dict': ..., 'meta': ...}`` holding tensors and plain
Python values only, so it loads with ``torch.load(weights_only=True)``. The
VisionTransformer ``arch`` to build is printed and kept in ``meta``.

``tools/model_converters/vit_npz_to_mmpretrain.py`` is the command line of this module.
"""
import os.path as osp
import re
import zipfile
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

from .errors import ConversionError

HEAD_TYPES = ('LinearClsHead', 'VisionTransformerClsHead')

# Sub-module names of one encoder block: (ln1, attention, ln2, mlp).
BLOCK_NAMINGS = {
    'vision_transformer': ('LayerNorm_0', 'MultiHeadDotProductAttention_1', 'LayerNorm_2',
                           'MlpBlock_3'),
    'big_vision': ('LayerNorm_0', 'MultiHeadDotProductAttention_0', 'LayerNorm_1',
                   'MlpBlock_0'),
}


def load_npz(path: str) -> Dict[str, np.ndarray]:
    """Read every array of an ``.npz`` file (no pickled objects allowed).

    Args:
        path (str): The ``.npz`` file, e.g. ``ViT-B_16.npz``.

    Returns:
        dict[str, np.ndarray]: The arrays by their ``/``-separated names.

    Raises:
        ConversionError: The file is missing or not an archive of arrays.
    """
    if not osp.isfile(path):
        raise ConversionError(f'{path}: no such file')
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError) as err:
        raise ConversionError(
            f'{path} is not a readable .npz archive of arrays ({err}); expected a Google '
            f'ViT checkpoint such as ViT-B_16.npz') from err


class _Reader:
    """Hands out arrays by name and remembers which were used, so that
    unknown leftovers can be reported instead of silently dropped."""

    def __init__(self, weights: Mapping[str, np.ndarray], src: str):
        self.weights = weights
        self.src = src
        self.used = set()

    def has(self, key: str) -> bool:
        return key in self.weights

    def get(self, key: str, ndim: Optional[int] = None) -> np.ndarray:
        if key not in self.weights:
            raise ConversionError(f'{self.src}: missing key "{key}" of the Google ViT layout')
        array = self.weights[key]
        if ndim is not None and array.ndim != ndim:
            raise ConversionError(f'{self.src}: "{key}" has shape {tuple(array.shape)}, '
                                  f'expected {ndim} dimensions')
        self.used.add(key)
        return array


def _tensor(array: np.ndarray) -> torch.Tensor:
    # Copy: the arrays are owned by the npz reader and may be read-only.
    return torch.from_numpy(np.array(array, copy=True))


def _find_prefix(weights: Mapping[str, np.ndarray], src: str) -> str:
    prefixes = sorted(k[:-len('embedding/kernel')] for k in weights
                      if k.endswith('embedding/kernel') and
                      (k == 'embedding/kernel' or k.endswith('/embedding/kernel')))
    if len(prefixes) != 1:
        sample = ', '.join(sorted(weights)[:6]) or 'none'
        found = 'no' if not prefixes else f'{len(prefixes)} ({prefixes})'
        raise ConversionError(
            f'{src}: unknown key layout, found {found} patch embedding "embedding/kernel"; '
            f'expected a Google ViT .npz (keys like "embedding/kernel", '
            f'"Transformer/encoderblock_0/..."), got keys: {sample}, ...')
    prefix = prefixes[0]
    if prefix + 'conv_root/kernel' in weights:
        raise ConversionError(f'{src}: hybrid ResNet+ViT checkpoints (conv_root) are not '
                              f'supported; mmpretrain VisionTransformer has a linear patch '
                              f'embedding')
    return prefix


def _block_layout(weights: Mapping[str, np.ndarray], enc: str,
                  src: str) -> Tuple[List[str], bool, Tuple[str, ...]]:
    """Return the block prefixes, whether they are stacked, and the names."""
    indices = sorted({int(m.group(1)) for k in weights
                      for m in [re.match(re.escape(enc) + r'encoderblock_(\d+)/', k)] if m})
    stacked = any(k.startswith(enc + 'encoderblock/') for k in weights)
    if stacked and indices:
        raise ConversionError(f'{src}: has both stacked "{enc}encoderblock/" and per-block '
                              f'"{enc}encoderblock_<i>/" keys')
    if not stacked and not indices:
        raise ConversionError(f'{src}: no transformer blocks ("{enc}encoderblock_0/...") '
                              f'found')
    if indices and indices != list(range(len(indices))):
        missing = sorted(set(range(indices[-1] + 1)) - set(indices))
        raise ConversionError(f'{src}: encoder blocks {missing} are missing')
    blocks = [enc + 'encoderblock/'] if stacked else [
        f'{enc}encoderblock_{i}/' for i in indices]
    for names in BLOCK_NAMINGS.values():
        if f'{blocks[0]}{names[1]}/query/kernel' in weights:
            return blocks, stacked, names
    raise ConversionError(
        f'{src}: unknown encoder block layout under "{blocks[0]}"; expected '
        f'{" or ".join(n[1] for n in BLOCK_NAMINGS.values())}/query/kernel')


def convert_npz(weights: Mapping[str, np.ndarray],
                src: str = '<npz>',
                keep_head: bool = False,
                head_type: str = 'LinearClsHead') -> Tuple[Dict[str, torch.Tensor], dict]:
    """Map Google ViT arrays to mmpretrain VisionTransformer tensors.

    Args:
        weights (Mapping[str, np.ndarray]): The arrays of the ``.npz`` file.
        src (str): Name of the source, used in error messages and ``meta``.
        keep_head (bool): Keep the classification head. Defaults to False.
        head_type (str): mmpretrain head whose key names to use for a kept
            head, one of ``HEAD_TYPES``. Defaults to 'LinearClsHead'.

    Returns:
        tuple[dict, dict]: The state dict and ``meta`` (arch, sizes, head).
    """
    if head_type not in HEAD_TYPES:
        raise ValueError(f'head_type must be one of {HEAD_TYPES}, got {head_type!r}')
    prefix = _find_prefix(weights, src)
    enc = prefix + 'Transformer/'
    reader = _Reader(weights, src)
    blocks, stacked, (ln1, mha, ln2, mlp) = _block_layout(weights, enc, src)
    state_dict = {}

    kernel = reader.get(prefix + 'embedding/kernel', ndim=4)  # (ph, pw, C, D)
    embed_dims = kernel.shape[3]
    state_dict['patch_embed.projection.weight'] = _tensor(kernel.transpose(3, 2, 0, 1))
    state_dict['patch_embed.projection.bias'] = _tensor(reader.get(prefix + 'embedding/bias', 1))

    with_cls_token = reader.has(prefix + 'cls')
    if with_cls_token:
        state_dict['cls_token'] = _tensor(reader.get(prefix + 'cls', ndim=3))
    pos_key = enc + 'posembed_input/pos_embedding'
    if not reader.has(pos_key) and reader.has(prefix + 'pos_embedding'):
        pos_key = prefix + 'pos_embedding'  # big_vision keeps it outside the encoder
    pos_embed = reader.get(pos_key, ndim=3)
    state_dict['pos_embed'] = _tensor(pos_embed)

    # Stacked (scanned) blocks share one array per name with a leading depth axis.
    depth = len(reader.get(f'{blocks[0]}{ln1}/scale', ndim=2)) if stacked else len(blocks)

    def block_arrays(name: str, ndim: int) -> List[np.ndarray]:
        if not stacked:
            return [reader.get(block + name, ndim=ndim) for block in blocks]
        arrays = reader.get(blocks[0] + name, ndim=ndim + 1)
        if len(arrays) != depth:
            raise ConversionError(f'{src}: "{blocks[0]}{name}" stacks {len(arrays)} blocks, '
                                  f'"{blocks[0]}{ln1}/scale" stacks {depth}')
        return list(arrays)

    def linear(name: str, dst: str, depth_dims: Tuple[int, int]) -> None:
        """Flax Dense/DenseGeneral kernel -> torch (out, in) weight."""
        kernels = block_arrays(name + '/kernel', ndim=sum(depth_dims))
        biases = block_arrays(name + '/bias', ndim=depth_dims[1])
        for i, (k, b) in enumerate(zip(kernels, biases, strict=True)):
            num_in = int(np.prod(k.shape[:depth_dims[0]]))
            state_dict[dst.format(i) + '.weight'] = _tensor(k.reshape(num_in, -1).T)
            state_dict[dst.format(i) + '.bias'] = _tensor(b.reshape(-1))

    def norm(name: str, dst: str) -> None:
        scales, biases = block_arrays(name + '/scale', 1), block_arrays(name + '/bias', 1)
        for i, (scale, bias) in enumerate(zip(scales, biases, strict=True)):
            state_dict[dst.format(i) + '.weight'] = _tensor(scale)
            state_dict[dst.format(i) + '.bias'] = _tensor(bias)

    norm(ln1, 'layers.{}.ln1')
    # q, k, v are separate (D, heads, head_dim) kernels; mmpretrain fuses them
    # into one (3 * D, D) linear whose output splits as (3, heads, head_dim).
    queries = block_arrays(f'{mha}/query/kernel', ndim=3)
    num_heads = queries[0].shape[1]
    qkv = {}
    for part in ('query', 'key', 'value'):
        kernels = block_arrays(f'{mha}/{part}/kernel', ndim=3)
        biases = block_arrays(f'{mha}/{part}/bias', ndim=2)
        qkv[part] = [(k.reshape(k.shape[0], -1).T, b.reshape(-1))
                     for k, b in zip(kernels, biases, strict=True)]
    for i in range(depth):
        state_dict[f'layers.{i}.attn.qkv.weight'] = _tensor(
            np.concatenate([qkv[p][i][0] for p in ('query', 'key', 'value')]))
        state_dict[f'layers.{i}.attn.qkv.bias'] = _tensor(
            np.concatenate([qkv[p][i][1] for p in ('query', 'key', 'value')]))
    linear(f'{mha}/out', 'layers.{}.attn.proj', (2, 1))  # kernel (heads, head_dim, D)
    norm(ln2, 'layers.{}.ln2')
    linear(f'{mlp}/Dense_0', 'layers.{}.ffn.layers.0.0', (1, 1))
    linear(f'{mlp}/Dense_1', 'layers.{}.ffn.layers.1', (1, 1))
    num_layers = depth
    feedforward_channels = state_dict['layers.0.ffn.layers.0.0.weight'].shape[0]

    state_dict['ln1.weight'] = _tensor(reader.get(enc + 'encoder_norm/scale', ndim=1))
    state_dict['ln1.bias'] = _tensor(reader.get(enc + 'encoder_norm/bias', ndim=1))

    head_keys = sorted(k for k in weights
                       if re.match(re.escape(prefix) + r'(head|pre_logits|MAPHead_\d+)/', k))
    num_classes = weights[prefix + 'head/bias'].shape[-1] if (
        prefix + 'head/bias' in weights) else None
    head = dict(kept=False, num_classes=num_classes,
                pre_logits=prefix + 'pre_logits/kernel' in weights)
    if keep_head:
        if num_classes is None:
            raise ConversionError(f'{src}: --keep-head given but there is no "head/kernel"')
        if any('MAPHead' in k for k in head_keys):
            raise ConversionError(f'{src}: attention-pooling heads (MAPHead) are not '
                                  f'supported by --keep-head')
        head_w = reader.get(prefix + 'head/kernel', ndim=2).T
        head_b = reader.get(prefix + 'head/bias', ndim=1)
        if head_type == 'LinearClsHead':
            if head['pre_logits']:
                raise ConversionError(
                    f'{src}: has a pre-logits (tanh) layer, which LinearClsHead cannot '
                    f'represent; use --head-type VisionTransformerClsHead (hidden_dim='
                    f'{weights[prefix + "pre_logits/bias"].shape[-1]})')
            state_dict['head.fc.weight'] = _tensor(head_w)
            state_dict['head.fc.bias'] = _tensor(head_b)
        else:
            state_dict['head.layers.head.weight'] = _tensor(head_w)
            state_dict['head.layers.head.bias'] = _tensor(head_b)
            if head['pre_logits']:
                state_dict['head.layers.pre_logits.weight'] = _tensor(
                    reader.get(prefix + 'pre_logits/kernel', ndim=2).T)
                state_dict['head.layers.pre_logits.bias'] = _tensor(
                    reader.get(prefix + 'pre_logits/bias', ndim=1))
        head.update(kept=True, type=head_type)
    else:
        reader.used.update(head_keys)  # the pre-training head is not transferred
    # Training checkpoints keep e.g. optimizer moments next to 'opt/target/'.
    outside = [k for k in weights if not k.startswith(prefix)]
    reader.used.update(outside)

    leftovers = sorted(set(weights) - reader.used)
    if leftovers:
        raise ConversionError(
            f'{src}: {len(leftovers)} keys are not part of the supported ViT layout and '
            f'would be lost: {", ".join(leftovers[:8])}{", ..." if len(leftovers) > 8 else ""}')

    if embed_dims % num_heads or queries[0].shape[0] != embed_dims:
        raise ConversionError(f'{src}: attention kernels {tuple(queries[0].shape)} do not '
                              f'match embed_dims={embed_dims}')
    num_patches = pos_embed.shape[1] - int(with_cls_token)
    grid = int(round(num_patches**0.5))
    patch_size = tuple(int(s) for s in kernel.shape[:2])
    meta = dict(
        source=osp.basename(src),
        converter='vit_npz_to_mmpretrain',
        arch=dict(embed_dims=int(embed_dims), num_layers=int(num_layers),
                  num_heads=int(num_heads), feedforward_channels=int(feedforward_channels)),
        patch_size=patch_size[0] if patch_size[0] == patch_size[1] else patch_size,
        img_size=grid * patch_size[0] if grid * grid == num_patches else None,
        num_patches=int(num_patches),
        with_cls_token=with_cls_token,
        head=head,
        ignored=len(outside),
    )
    return state_dict, meta


def describe(meta: dict) -> str:
    """What :func:`convert_npz` found, as indented lines to print.

    Args:
        meta (dict): The ``meta`` returned by :func:`convert_npz`.

    Returns:
        str: The arch, patch and image size, cls token and head.
    """
    arch, head = meta['arch'], meta['head']
    lines = [
        f'arch: {arch}',
        f'patch_size={meta["patch_size"]}, img_size={meta["img_size"]} '
        f'({meta["num_patches"]} patches), cls token: '
        f'{"yes" if meta["with_cls_token"] else "no (set with_cls_token=False)"}',
    ]
    if head['num_classes'] is None:
        lines.append('head: none in the source')
    else:
        action = f'kept as {head["type"]}' if head['kept'] else 'dropped'
        extra = ' + pre-logits' if head['pre_logits'] else ''
        lines.append(f'head: {head["num_classes"]} classes{extra}, {action}')
    if meta['ignored']:
        lines.append(f'ignored {meta["ignored"]} arrays outside the model parameters '
                     f'(e.g. optimizer state)')
    return '\n'.join('  ' + line for line in lines)
