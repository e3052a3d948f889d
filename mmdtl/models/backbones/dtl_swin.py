"""DTL on mmpretrain's SwinTransformer: the glue that says where the
Compact Side Network taps and where it adds back, stage by stage."""
from typing import Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmpretrain.models.backbones import SwinTransformer
from mmpretrain.models.utils import resize_pos_embed
from mmpretrain.registry import MODELS

from mmdtl.utils.trunk_keys import install_trunk_check

from ..frozen_dtype import store_frozen_weights
from ..frozen_linear import build_frozen_linear_packs, packed_linears
from ..prefix_cache import build_prefix_cache, cache_applies, check_deterministic_prefix
from ..side_network import build_side_network


@MODELS.register_module()
class DTLSwin(SwinTransformer):
    """Swin Transformer fine-tuned with Disentangled Transfer Learning.

    A frozen :class:`mmpretrain.models.SwinTransformer` (any arch of its zoo,
    any input size) plus a Compact Side Network built from ``csn``. Blocks
    are numbered globally across stages (Swin-B: 0-23). Before block ``i``
    the CSN reads the block's input; after every block ``i >= csn.start``
    (``M``) its output is added to the token stream, before the stage's
    patch merging, as in the released code. The running sum restarts at
    every stage and each stage that adds back has its own depthwise conv,
    applied on the stage's real token grid. Until block ``M`` the trunk
    never sees task-specific input, so when it is frozen it runs under
    ``torch.no_grad()`` and keeps no activations for backward.

    ``out_indices``, the per-stage norms ``norm{i}``,
    ``out_after_downsample``, ``pad_small_map`` and the other arguments of
    the parent keep working, for classification (with a
    ``GlobalAveragePooling`` neck) and for dense prediction.

    Args:
        csn (dict): Config of the side network, e.g.
            ``dict(type='CompactSideNetwork', rank=4,
            taps=list(range(4, 24)), start=14, dwconv_kernel=5)``;
            ``embed_dims``, ``num_layers`` and ``stages`` are filled in from
            the backbone.
        freeze_backbone (bool): Freeze every parameter outside the side
            network. Defaults to True.
        checkpoint_suffix (bool): Activation checkpointing of the blocks
            after ``M``: they keep only their input for backward and are
            recomputed during backward, still passing gradients to the side
            network. Trades compute for memory (large detection inputs).
            Defaults to False.
        prefix_cache (dict, optional): Cache the frozen trunk's features up
            to block ``M`` per image and skip it on a hit (see
            :class:`PrefixFeatureCache`, e.g. ``dict(storage='device')``).
            Needs no drop path in blocks ``0..M`` and ``out_indices`` of
            stages that end at ``M`` or later. Defaults to None (no cache).
        pack_frozen_weights (bool): On CPU, run the frozen linears on
            oneDNN-packed weights (see :class:`DTLViT`). Defaults to False.
        allow_random_trunk (bool): Allow training with a frozen trunk never
            loaded from a checkpoint (see :class:`DTLViT`). Defaults to False.
        allow_partial_trunk (bool): Warn instead of raising when a checkpoint
            does not fit the trunk (see :class:`DTLViT`). Defaults to False.
        frozen_weights_dtype (str, optional): Store the frozen Linear/Conv
            weights as ``'bfloat16'`` or ``'float16'`` (see
            :class:`DTLViT`). Defaults to None (fp32).
        **kwargs: Other arguments of :class:`SwinTransformer`.
    """

    def __init__(self,
                 *args,
                 csn: dict = dict(type='CompactSideNetwork'),
                 freeze_backbone: bool = True,
                 checkpoint_suffix: bool = False,
                 prefix_cache: Optional[dict] = None,
                 pack_frozen_weights: bool = False,
                 allow_random_trunk: bool = False,
                 allow_partial_trunk: bool = False,
                 frozen_weights_dtype: Optional[str] = None,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.freeze_backbone = freeze_backbone
        self.checkpoint_suffix = checkpoint_suffix
        self.frozen_linear_packs = build_frozen_linear_packs(pack_frozen_weights, 'DTLSwin')
        if freeze_backbone:
            self.requires_grad_(False)
        defaults = self.csn_defaults()
        block_dims, block_stages = defaults['embed_dims'], defaults['stages']
        if isinstance(csn, dict):
            self._check_csn_cfg(csn, **defaults)
        self.csn = build_side_network(csn, **defaults)
        if (self.csn.num_layers != len(block_dims) or list(self.csn.embed_dims) != block_dims
                or list(self.csn.stages) != block_stages):
            raise ValueError(
                f'csn was built for {self.csn.num_layers} blocks of dims '
                f'{list(self.csn.embed_dims)} in stages {list(self.csn.stages)}, but the '
                f'backbone (depths {list(self.depths)}) has blocks of dims {block_dims} '
                f'in stages {block_stages}')
        self.prefix_cache = build_prefix_cache(self, prefix_cache)
        # After the parent's hooks (pos-embed and relative-position resize).
        install_trunk_check(self, allow_random_trunk, allow_partial_trunk)
        self.frozen_weights_dtype = store_frozen_weights(self, frozen_weights_dtype, 'DTLSwin')

    def csn_defaults(self) -> dict:
        """What this backbone fills into a side-network config: the dims and
        stage of every block, numbered globally."""
        block_dims = [stage.embed_dims for stage in self.stages for _ in stage.blocks]
        block_stages = [i for i, stage in enumerate(self.stages) for _ in stage.blocks]
        return dict(embed_dims=block_dims, num_layers=len(block_dims), stages=block_stages)

    @staticmethod
    def _check_csn_cfg(csn: dict, **backbone) -> None:
        """The backbone fills in these csn options; one set by hand must agree."""
        for key, value in backbone.items():
            if key not in csn:
                continue
            given = csn[key]
            if key == 'embed_dims' and isinstance(given, int):
                given = [given] * len(value)
            if isinstance(given, (list, tuple)):
                given = list(given)
            if given != value:
                raise ValueError(
                    f'csn.{key}={csn[key]!r} does not match the backbone, which has '
                    f'{key}={value}; leave it out of the csn config (DTLSwin fills it in)')

    def _prefix_modules(self) -> Iterator[nn.Module]:
        """The trunk modules whose input cannot depend on the side network:
        everything up to block M, patch merging included."""
        yield self.patch_embed
        index = 0
        for stage in self.stages:
            for block in stage.blocks:
                if index > self.csn.start:
                    return
                yield block
                index += 1
            if stage.downsample is not None and index <= self.csn.start:
                yield stage.downsample

    def _check_cacheable(self) -> None:
        start = self.csn.start
        blocks = [block for stage in self.stages for block in stage.blocks]
        check_deterministic_prefix(blocks[:start + 1], self.drop_after_pos, start)
        last_blocks = torch.tensor(self.depths).cumsum(0) - 1
        early = [i for i in self.out_indices if last_blocks[i] < start]
        if early:
            raise ValueError(
                f'prefix_cache: the stages {early} of out_indices end before block '
                f'csn.start={start} and lie in the cached prefix; only stages that end at '
                f'or after it are computed')

    def _embed(self, images: torch.Tensor) -> Tuple[torch.Tensor, tuple]:
        """Patch embedding and (optional) absolute position embedding."""
        x, hw_shape = self.patch_embed(images)
        if self.use_abs_pos_embed:
            x = x + resize_pos_embed(
                self.absolute_pos_embed, self.patch_resolution, hw_shape,
                self.interpolate_mode, self.num_extra_tokens)
        return self.drop_after_pos(x), hw_shape

    @torch.no_grad()
    def _prefix_features(self, images: torch.Tensor
                         ) -> Tuple[Dict[int, torch.Tensor], torch.Tensor, tuple]:
        """What the side network and block M + 1 need from the frozen trunk:
        the inputs of the tapped blocks <= M and the output of block M (before
        its add-back, on its stage's grid)."""
        x, hw_shape = self._embed(images)
        tap_inputs, index = {}, 0
        for stage in self.stages:
            for block in stage.blocks:
                if index in self.csn.taps:
                    tap_inputs[index] = x
                x = block(x, hw_shape)
                if index == self.csn.start:
                    return tap_inputs, x, tuple(hw_shape)
                index += 1
            if stage.downsample is not None:
                x, hw_shape = stage.downsample(x, hw_shape)
        raise AssertionError('csn.start lies beyond the last block')

    def _frozen_prefix(self) -> bool:
        """True when nothing up to block M can receive a gradient."""
        params = [p for m in self._prefix_modules() for p in m.parameters()]
        if self.use_abs_pos_embed:
            params.append(self.absolute_pos_embed)
        return not any(p.requires_grad for p in params)

    def _format_output(self, stage_index: int, x: torch.Tensor, hw_shape) -> torch.Tensor:
        out = getattr(self, f'norm{stage_index}')(x)
        return out.view(-1, *hw_shape, self.num_features[stage_index]).permute(
            0, 3, 1, 2).contiguous()

    def forward(self, x: torch.Tensor) -> tuple:
        with packed_linears(self.frozen_linear_packs, x):
            return self._forward(x)

    def _run_block(self, block: nn.Module, x: torch.Tensor, hw_shape) -> torch.Tensor:
        # Checkpointing recomputes the block during backward, outside forward.
        with packed_linears(self.frozen_linear_packs, x):
            return block(x, hw_shape)

    def _forward(self, x: torch.Tensor) -> tuple:
        grad_enabled = torch.is_grad_enabled()
        no_grad_prefix = self._frozen_prefix()
        start = self.csn.start

        def trunk_grad(num_done: int):
            # Until block M's output receives the side output, the frozen
            # trunk only sees the image: record no graph for it.
            return torch.set_grad_enabled(
                grad_enabled and not (no_grad_prefix and num_done <= start))

        if cache_applies(self.prefix_cache, self.training, no_grad_prefix):
            # Blocks 0..M (and the patch merging before M) come from the
            # cache: run blocks from M + 1 on.
            tap_inputs, x, hw_shape = self.prefix_cache.fetch(self, x, self._prefix_features)
            first = start + 1
        else:
            with trunk_grad(0):
                x, hw_shape = self._embed(x)
            tap_inputs, first = {}, 0

        outs: List[torch.Tensor] = []
        running_sum = None
        index = 0  # global block index
        for i, stage in enumerate(self.stages):
            for block in stage.blocks:
                running_sum = self.csn.tap(
                    index, x if index >= first else tap_inputs.get(index), running_sum)
                if index >= first:
                    with trunk_grad(index):
                        if self.checkpoint_suffix and torch.is_grad_enabled() \
                                and x.requires_grad:
                            x = cp.checkpoint(self._run_block, block, x, hw_shape,
                                              use_reentrant=False)
                        else:
                            x = block(x, hw_shape)
                # The block output is on the unpadded grid: window padding
                # is undone inside the block.
                x = self.csn.add_back(index, x, running_sum, hw_shape)
                index += 1
            if index < first:
                continue  # a stage of the cached prefix, patch merging included
            if stage.downsample is not None and self.out_after_downsample:
                with trunk_grad(index):
                    x, hw_shape = stage.downsample(x, hw_shape)
            if i in self.out_indices:
                outs.append(self._format_output(i, x, hw_shape))
            if stage.downsample is not None and not self.out_after_downsample:
                with trunk_grad(index):
                    x, hw_shape = stage.downsample(x, hw_shape)
        return tuple(outs)

    def train(self, mode: bool = True) -> 'DTLSwin':
        # The parent's train() (frozen_stages, norm_eval) returns None, which
        # breaks ``model.eval()`` chaining; keep its behaviour, return self.
        super().train(mode)
        return self

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        """Rename old (mmcls < v2) keys as the parent does; the parent skips
        this for subclasses."""
        version = local_metadata.get('version', None)
        if version is None or version < 2:
            final_norm = f'norm{len(self.stages) - 1}.'
            for key in [k for k in state_dict if k.startswith(prefix + 'norm.')]:
                new_key = prefix + final_norm + key[len(prefix + 'norm.'):]
                state_dict[new_key] = state_dict.pop(key)
        if version is None or version < 3:
            for key in [k for k in state_dict if k.startswith(prefix) and 'attn_mask' in k]:
                del state_dict[key]
        # Skip SwinTransformer's renaming (done above) and load as nn.Module.
        super(SwinTransformer, self)._load_from_state_dict(
            state_dict, prefix, local_metadata, *args, **kwargs)
