"""DTL on mmpretrain's VisionTransformer: the glue that says where the
Compact Side Network taps and where it adds back."""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmpretrain.models.backbones import VisionTransformer
from mmpretrain.models.utils import resize_pos_embed
from mmpretrain.registry import MODELS

from mmdtl.utils.trunk_keys import install_trunk_check

from ..frozen_dtype import store_frozen_weights
from ..frozen_linear import build_frozen_linear_packs, packed_linears
from ..prefix_cache import build_prefix_cache, cache_applies, check_deterministic_prefix
from ..side_network import build_side_network


@MODELS.register_module()
class DTLViT(VisionTransformer):
    """Vision Transformer fine-tuned with Disentangled Transfer Learning.

    A frozen :class:`mmpretrain.models.VisionTransformer` (any arch of its zoo,
    any image and patch size) plus a Compact Side Network built from ``csn``.
    Before block ``i`` the CSN reads the block's input; after every block
    ``i >= csn.start`` (``M``) its output is added to the token stream.
    Blocks ``0..M`` never see task-specific input, so when they are frozen
    they run under ``torch.no_grad()`` and keep no activations for backward.

    The defaults follow the released classification recipe: the mean of the
    patch tokens goes through the backbone's final LayerNorm
    (``out_type='avg_featmap'``, ``final_norm=False``; a pre-trained ``ln1``
    is loaded into ``ln2``). Every other ``out_type`` and ``out_indices``
    of the parent keep working.

    Args:
        csn (dict): Config of the side network, e.g.
            ``dict(type='CompactSideNetwork', rank=2, start=6,
            dwconv_kernel=3)``; ``embed_dims`` and ``num_layers`` are filled
            in from the backbone.
        freeze_backbone (bool): Freeze every parameter outside the side
            network. Defaults to True.
        checkpoint_suffix (bool): Activation checkpointing of the blocks
            after ``M``: they keep only their input for backward (which the
            CSN taps keep anyway) and are recomputed during backward, still
            passing gradients to the side network; the CSN tap and add-back
            of each such block run inside its checkpoint, so the tap's
            (autocast) copy of the input is not kept either. Trades compute
            for memory. Defaults to False.
        recompute_prefix_taps (bool): Keep none of the frozen prefix's
            tapped block inputs for backward: the prefix's taps run in one
            autograd function that saves only the images and runs blocks
            ``0..M`` again during backward (see
            :meth:`CompactSideNetwork.recomputed_prefix_taps`). Same logits
            and gradients, one extra prefix forward per step. Needs a frozen,
            deterministic prefix (no drop path or dropout in blocks
            ``0..M``), ``out_indices`` after ``M`` and no ``prefix_cache``.
            Defaults to False.
        prefix_cache (dict, optional): Cache the frozen prefix's features
            per image and skip the prefix forward on a hit (see
            :class:`PrefixFeatureCache` for the keys, e.g.
            ``dict(storage='device')``). Needs a deterministic prefix
            (no drop path or dropout in blocks ``0..M``) and ``out_indices``
            after ``M``. Defaults to None (no cache).
        pack_frozen_weights (bool): On CPU, keep the frozen linear weights
            in oneDNN's packed layout and run their forward and input-grad
            GEMMs on it (see :class:`FrozenLinearPacks`); same results
            within fp32 rounding, no effect on GPU or under autocast.
            Defaults to False.
        frozen_weights_dtype (str, optional): Store the frozen Linear/Conv
            weights and biases as ``'bfloat16'`` or ``'float16'`` (norms and
            the CSN stay fp32): half the weight memory for AMP training,
            bit-identical under autocast in that dtype, an approximation in
            fp32 (see :mod:`mmdtl.models.frozen_dtype`). Defaults to None.
        allow_random_trunk (bool): Allow training with a frozen trunk that
            was never loaded from a checkpoint (no Pretrained init_cfg, no
            ``load_from``, no resume), e.g. a random-trunk control. By
            default ``TrunkCheckHook`` refuses it. Defaults to False.
        allow_partial_trunk (bool): Load checkpoints that lack trunk
            tensors or have other shapes with a warning instead of a
            :class:`TrunkMismatchError` (see
            :mod:`mmdtl.utils.trunk_keys`). For experts. Defaults to False.
        out_type (str): See :class:`VisionTransformer`.
            Defaults to ``'avg_featmap'``.
        final_norm (bool): See :class:`VisionTransformer`. Defaults to False.
        **kwargs: Other arguments of :class:`VisionTransformer`.
    """

    def __init__(self,
                 *args,
                 csn: dict = dict(type='CompactSideNetwork'),
                 freeze_backbone: bool = True,
                 checkpoint_suffix: bool = False,
                 recompute_prefix_taps: bool = False,
                 prefix_cache: Optional[dict] = None,
                 pack_frozen_weights: bool = False,
                 allow_random_trunk: bool = False,
                 allow_partial_trunk: bool = False,
                 frozen_weights_dtype: Optional[str] = None,
                 out_type: str = 'avg_featmap',
                 final_norm: bool = False,
                 **kwargs):
        super().__init__(*args, out_type=out_type, final_norm=final_norm, **kwargs)
        self.freeze_backbone = freeze_backbone
        self.checkpoint_suffix = checkpoint_suffix
        if freeze_backbone:
            self.requires_grad_(False)
        self.csn = build_side_network(csn, **self.csn_defaults())
        if self.csn.num_layers != self.num_layers or any(
                d != self.embed_dims for d in self.csn.embed_dims):
            raise ValueError(
                f'csn was built for {self.csn.num_layers} blocks of dims '
                f'{sorted(set(self.csn.embed_dims))}, but the backbone has '
                f'{self.num_layers} blocks of {self.embed_dims} dims')
        self._register_load_state_dict_pre_hook(self._final_norm_into_ln2)
        # After the parent's hooks (pos-embed resize) and the ln1 -> ln2 rename.
        install_trunk_check(self, allow_random_trunk, allow_partial_trunk)
        self.frozen_linear_packs = build_frozen_linear_packs(pack_frozen_weights, 'DTLViT')
        self.prefix_cache = build_prefix_cache(self, prefix_cache)
        self.frozen_weights_dtype = store_frozen_weights(self, frozen_weights_dtype, 'DTLViT')
        self.recompute_prefix_taps = recompute_prefix_taps
        if recompute_prefix_taps:
            self._check_recomputable()

    def _check_recomputable(self) -> None:
        """Refuse what ``recompute_prefix_taps`` cannot reproduce in backward."""
        if self.prefix_cache is not None:
            raise ValueError('recompute_prefix_taps=True and prefix_cache skip the prefix in '
                             'different ways; use one of them')
        if not self._frozen_prefix():
            raise ValueError('recompute_prefix_taps=True needs a frozen prefix '
                             '(freeze_backbone=True)')
        start = self.csn.start
        check_deterministic_prefix(self.layers[:start + 1], self.drop_after_pos, start,
                                   option='recompute_prefix_taps')
        early = [i for i in self.out_indices if i <= start]
        if early:
            raise ValueError(f'recompute_prefix_taps: out_indices {early} lie in the prefix '
                             f'(<= csn.start={start}), whose features are not returned')

    def csn_defaults(self) -> dict:
        """What this backbone fills into a side-network config."""
        return dict(embed_dims=self.embed_dims, num_layers=self.num_layers)

    def _check_cacheable(self) -> None:
        start = self.csn.start
        check_deterministic_prefix(self.layers[:start + 1], self.drop_after_pos, start)
        early = [i for i in self.out_indices if i <= start]
        if early:
            raise ValueError(f'prefix_cache: out_indices {early} lie in the cached prefix '
                             f'(<= csn.start={start}); only later outputs are computed')

    def train(self, mode: bool = True) -> 'DTLViT':
        # mmpretrain's BaseBackbone.train returns None; keep nn.Module's chaining.
        super().train(mode)
        return self

    def _final_norm_into_ln2(self, state_dict, prefix, *args, **kwargs):
        """Pre-trained checkpoints name the final LayerNorm ``ln1``; with
        ``avg_featmap`` and no ``final_norm`` it normalises the pooled
        patch tokens as ``ln2``."""
        if self.final_norm or self.out_type != 'avg_featmap':
            return
        for name in ('weight', 'bias'):
            src, dst = f'{prefix}ln1.{name}', f'{prefix}ln2.{name}'
            if src in state_dict and dst not in state_dict:
                state_dict[dst] = state_dict.pop(src)

    def _prefix_modules(self) -> list:
        """The trunk modules whose output cannot depend on the side network:
        everything up to block M."""
        return [self.patch_embed, self.pre_norm, *self.layers[:self.csn.start + 1]]

    def _frozen_prefix(self) -> bool:
        """True when nothing up to block M can receive a gradient."""
        modules = self._prefix_modules()
        params = [p for m in modules for p in m.parameters()]
        params += [p for p in (self.cls_token, self.pos_embed) if p is not None]
        return not any(p.requires_grad for p in params)

    def _embed(self, images: torch.Tensor) -> Tuple[torch.Tensor, tuple]:
        """Patch embedding, cls token, position embedding (any grid). An
        input whose size is not a multiple of the patch size is padded at
        the bottom/right by the parent's ``PatchEmbed`` (``padding='corner'``),
        so the grid, and the side network's DWConv, cover the padded image."""
        x, grid = self.patch_embed(images)
        if self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(len(images), -1, -1), x), dim=1)
        x = x + resize_pos_embed(
            self.pos_embed, self.patch_resolution, grid,
            mode=self.interpolate_mode, num_extra_tokens=self.num_extra_tokens)
        return self.pre_norm(self.drop_after_pos(x)), grid

    @torch.no_grad()
    def _prefix_features(self, images: torch.Tensor) -> Tuple[dict, torch.Tensor, tuple]:
        """What the side network and block M + 1 need from the frozen prefix:
        the inputs of the tapped blocks <= M and the output of block M."""
        tap_inputs = {}

        def keep(index, tokens):
            if index in self.csn.taps:
                tap_inputs[index] = tokens

        x, grid = self._run_prefix(images, keep)
        return tap_inputs, x, grid

    @torch.no_grad()
    def _run_prefix(self, images: torch.Tensor, on_tap) -> Tuple[torch.Tensor, tuple]:
        """Blocks 0..M on ``images``, calling ``on_tap(i, input of block i)``.

        Args:
            images (Tensor): The input images.
            on_tap (Callable): Receives every prefix block's index and input.

        Returns:
            tuple: The output of block M and the patch grid.
        """
        # Also called from backward (recomputed taps), outside forward.
        with packed_linears(self.frozen_linear_packs, images):
            x, grid = self._embed(images)
            for i, layer in enumerate(self.layers[:self.csn.start + 1]):
                on_tap(i, x)
                x = layer(x)
        return x, grid

    def forward(self, x: torch.Tensor) -> tuple:
        with packed_linears(self.frozen_linear_packs, x):
            return self._forward(x)

    def _run_suffix_block(self, index: int, layer: nn.Module, x: torch.Tensor,
                          running_sum: Optional[torch.Tensor],
                          grid: tuple) -> Tuple[torch.Tensor, torch.Tensor]:
        """CSN tap, block ``index`` and add-back: the unit that
        ``checkpoint_suffix`` recomputes during backward.

        Args:
            index (int): Index of the block (after M).
            layer (nn.Module): The block.
            x (Tensor): Its input tokens.
            running_sum (Tensor | None): The CSN running sum before its tap.
            grid (tuple): (H, W) of the patch tokens.
        """
        # Checkpointing recomputes the block during backward, outside forward.
        with packed_linears(self.frozen_linear_packs, x):
            running_sum = self.csn.tap(index, x, running_sum)
            x = layer(x)
        return self.csn.add_back(index, x, running_sum, grid, self.num_extra_tokens), running_sum

    def _forward(self, x: torch.Tensor) -> tuple:
        grad_enabled = torch.is_grad_enabled()
        no_grad_prefix = self._frozen_prefix()
        if cache_applies(self.prefix_cache, self.training, no_grad_prefix):
            # Blocks 0..M come from the cache: start the loop at M + 1.
            tap_inputs, x, grid = self.prefix_cache.fetch(self, x, self._prefix_features)
            first = self.csn.start + 1
        elif self.recompute_prefix_taps and grad_enabled:
            if not no_grad_prefix:
                raise ValueError('recompute_prefix_taps=True needs a frozen prefix')
            # The running sum of taps 0..M arrives whole: the loop starts at M + 1.
            running_sum, x, grid = self.csn.recomputed_prefix_taps(self._run_prefix, x)
            tap_inputs, first = None, self.csn.start + 1
        else:
            with torch.set_grad_enabled(grad_enabled and not no_grad_prefix):
                x, grid = self._embed(x)
            tap_inputs, first = {}, 0
        if tap_inputs is not None:
            running_sum = None
        outs = []
        for i, layer in enumerate(self.layers):
            # Block i's input is task-independent up to M: no graph needed.
            in_prefix = no_grad_prefix and i <= self.csn.start
            if (i >= first and self.checkpoint_suffix and not in_prefix and grad_enabled
                    and x.requires_grad):
                # Tap, block and add-back in one checkpoint: backward keeps only
                # the block input and the running sum, not also the tap's
                # (autocast) copy of the input.
                x, running_sum = cp.checkpoint(
                    self._run_suffix_block, i, layer, x, running_sum, grid,
                    use_reentrant=False)
            else:
                if tap_inputs is not None or i >= first:
                    running_sum = self.csn.tap(
                        i, x if i >= first else tap_inputs.get(i), running_sum)
                if i >= first:
                    with torch.set_grad_enabled(grad_enabled and not in_prefix):
                        x = layer(x)
                x = self.csn.add_back(i, x, running_sum, grid, self.num_extra_tokens)
            if i == len(self.layers) - 1 and self.final_norm:
                x = self.ln1(x)
            if i in self.out_indices:
                outs.append(self._format_output(x, grid))
        return tuple(outs)
