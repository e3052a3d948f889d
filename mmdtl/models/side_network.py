"""The Compact Side Network (CSN) of DTL: all of the method's math lives here.

Backbones only decide *where* to tap and *where* to add back (the runner of
:mod:`mmdtl.models.dtl` calls :meth:`CompactSideNetwork.tap` and
:meth:`CompactSideNetwork.add_back`); everything the side network computes
is in :class:`CompactSideNetwork`.
"""
import math
from typing import Any, Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmengine.model import BaseModule
from mmpretrain.registry import MODELS


def swish(x: torch.Tensor, beta: float) -> torch.Tensor:
    """Swish with a fixed slope: ``x * sigmoid(beta * x)``."""
    return x * torch.sigmoid(beta * x)


@MODELS.register_module()
class CompactSideNetwork(BaseModule):
    """Compact Side Network of DTL (arXiv 2312.07856).

    Before every tapped block ``i`` the network adds a rank-``rank``
    projection of that block's input to a running sum::

        h = h + z_{i-1} @ A_i^T @ B_i^T      (A_i: rank x d, B_i: d x rank)

    and after every block ``i >= start`` (or only those of
    ``add_back_blocks``) the backbone stream receives ``g(swish_beta(h))``,
    where ``g`` is the identity (DTL) or a depthwise ``k x k`` convolution
    over the patch-token grid (DTL+). Extra tokens (e.g. the cls token)
    receive ``swish_beta(h)`` only. ``A_i`` is Kaiming-uniform initialised
    and ``B_i`` zero initialised, so the side network starts as an exact
    no-op.

    Blocks may be grouped into stages (Swin): the running sum restarts at the
    first block of every stage, because the token dimension changes there,
    and every stage that adds back owns one depthwise convolution.

    Args:
        embed_dims (int | Sequence[int]): Token dimension of every block, one
            int for all blocks or one entry per block.
        num_layers (int): Number of blocks of the backbone.
        rank (int): Rank ``d'`` of every projection. Defaults to 2.
        taps (Sequence[int], optional): Global indices of the blocks whose
            input is projected into the running sum. Defaults to every block
            of the stages that add back (all blocks of a ViT).
        start (int, optional): ``M``, the first block after which the side
            output is added back; it is added after every block ``>= M``.
            Defaults to ``num_layers // 2``, or to the first of
            ``add_back_blocks``.
        add_back_blocks (Sequence[int], optional): A sparse side network
            (the journal version's dense-task design): add the side output
            back after these blocks only, e.g. every third block
            ``list(range(5, 12, 3))``; ``M`` is the first of them. Taps
            in between keep feeding the running sum. Defaults to every
            block from ``M`` on.
        beta (float): Slope of the Swish activation. Defaults to 100.
        dwconv_kernel (int): Kernel size of the depthwise convolution of
            DTL+ ('same' padding, so even sizes work as in the release);
            0 means plain DTL (no convolution). Defaults to 0.
        stages (Sequence[int], optional): Stage index of every block, used by
            hierarchical backbones. Defaults to one stage.
        recompute_side_output (bool): Keep only the running sum for backward
            and recompute ``g(swish(h))`` there, instead of storing the Swish
            and convolution intermediates of every add-back point. Outputs
            and gradients are unchanged. Defaults to True.
        init_cfg (dict, optional): Initialisation config. Defaults to None.
    """

    def __init__(self,
                 embed_dims: Union[int, Sequence[int]],
                 num_layers: int,
                 rank: int = 2,
                 taps: Optional[Sequence[int]] = None,
                 start: Optional[int] = None,
                 add_back_blocks: Optional[Sequence[int]] = None,
                 beta: float = 100.,
                 dwconv_kernel: int = 0,
                 stages: Optional[Sequence[int]] = None,
                 recompute_side_output: bool = True,
                 init_cfg: Optional[dict] = None):
        super().__init__(init_cfg=init_cfg)
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f'csn: num_layers must be a positive int, got {num_layers!r}')
        if isinstance(embed_dims, int):
            embed_dims = [embed_dims] * num_layers
        embed_dims = list(embed_dims)
        if len(embed_dims) != num_layers:
            raise ValueError(f'csn: embed_dims has {len(embed_dims)} entries '
                             f'but the backbone has {num_layers} blocks')
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f'csn.rank must be an int >= 1, got {rank!r}')
        if add_back_blocks is not None:
            add_back_blocks = sorted(set(add_back_blocks))
            if not add_back_blocks:
                raise ValueError('csn.add_back_blocks must name at least one block '
                                 '(or be None: every block from csn.start)')
            bad = [i for i in add_back_blocks
                   if not isinstance(i, int) or not 0 <= i < num_layers]
            if bad:
                raise ValueError(f'csn.add_back_blocks must be block indices in '
                                 f'[0, {num_layers - 1}], got {bad}')
            if start is not None and start != add_back_blocks[0]:
                raise ValueError(f'csn.start={start} must be the first of csn.add_back_blocks '
                                 f'{add_back_blocks}; leave csn.start out')
            start = add_back_blocks[0]
        if start is None:
            start = num_layers // 2
        if not isinstance(start, int) or not 0 <= start < num_layers:
            raise ValueError(f'csn.start (M, the first add-back block) must be an int '
                             f'in [0, {num_layers - 1}], got {start!r}')
        if add_back_blocks is None:
            add_back_blocks = list(range(start, num_layers))
        if not isinstance(dwconv_kernel, int) or dwconv_kernel < 0:
            raise ValueError(f'csn.dwconv_kernel must be 0 (DTL) or a kernel size >= 1 '
                             f'(DTL+), got {dwconv_kernel!r}')
        stages = [0] * num_layers if stages is None else list(stages)
        if len(stages) != num_layers or any(b < a for a, b in zip(stages, stages[1:])):
            raise ValueError('csn: stages must give a non-decreasing stage index per block')
        # The running sum restarts at every stage: a tap counts only if a later
        # (or its own) block of the same stage adds back.
        last_add_back = {stages[i]: i for i in add_back_blocks}
        if taps is None:  # every block of the stages that add back, up to the last add-back
            taps = [i for i in range(num_layers) if i <= last_add_back.get(stages[i], -1)]
        taps = sorted(set(taps))
        if not taps:
            raise ValueError('csn.taps must name at least one block')
        bad = [t for t in taps if not isinstance(t, int) or not 0 <= t < num_layers]
        if bad:
            raise ValueError(f'csn.taps must be block indices in [0, {num_layers - 1}], got {bad}')
        dead = [t for t in taps if t > last_add_back.get(stages[t], -1)]
        if dead:
            raise ValueError(f'csn.taps {dead} feed the running sum after the last block of '
                             f'their stage that adds back (add-back blocks {add_back_blocks}), '
                             f'so they would never be used')
        for i in add_back_blocks:
            if not any(t <= i and stages[t] == stages[i] for t in taps):
                raise ValueError(f'csn: block {i} adds back (add-back blocks '
                                 f'{add_back_blocks}) but no tap feeds the running sum of its '
                                 f'stage before it; taps={taps}')

        self.embed_dims = embed_dims
        self.num_layers = num_layers
        self.rank = rank
        self.taps = taps
        self.start = start
        self.add_back_blocks = add_back_blocks
        self._adds_back_at = frozenset(add_back_blocks)
        self.beta = float(beta)
        self.dwconv_kernel = dwconv_kernel
        self.stages = stages
        self.recompute_side_output = recompute_side_output
        # A_i (rank x d) projects down, B_i (d x rank) projects back up.
        self.down_projs = nn.ParameterDict({
            str(i): nn.Parameter(torch.empty(rank, embed_dims[i])) for i in taps})
        self.up_projs = nn.ParameterDict({
            str(i): nn.Parameter(torch.zeros(embed_dims[i], rank)) for i in taps})
        # One depthwise conv per stage that adds back, shared by its blocks.
        self.dwconvs = nn.ModuleDict()
        if dwconv_kernel > 0:
            for stage in sorted({stages[i] for i in add_back_blocks}):
                dim = embed_dims[stages.index(stage)]
                # 'same' padding as the release: even kernels pad one more
                # on the bottom/right (the released ViT recipes use k=4).
                self.dwconvs[str(stage)] = nn.Conv2d(
                    dim, dim, dwconv_kernel, padding='same', groups=dim, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The released initialisation: A Kaiming-uniform, B zeros, conv default.

        The A_i are drawn in block order, as the release creates them (the
        ParameterDicts sort their keys as strings: '10' before '2')."""
        for index in self.taps:
            nn.init.kaiming_uniform_(self.down_projs[str(index)], a=math.sqrt(5))
            nn.init.zeros_(self.up_projs[str(index)])
        for conv in self.dwconvs.values():
            conv.reset_parameters()

    def init_weights(self) -> None:
        if self.init_cfg is None:
            self.reset_parameters()
        else:
            super().init_weights()

    @property
    def adds_back(self) -> List[int]:
        """Indices of the blocks after which the side output is added."""
        return list(self.add_back_blocks)

    def adds_back_after(self, index: int) -> bool:
        """Whether the side output is added to the output of block ``index``."""
        return index in self._adds_back_at

    def tap(self, index: int, tokens: torch.Tensor,
            running_sum: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """Update the running sum with the input ``tokens`` of block ``index``.

        The running sum restarts at the first block of every stage.

        Args:
            index (int): Global index of the block about to run.
            tokens (Tensor): Its input tokens, shape (B, N, C).
            running_sum (Tensor | None): The sum so far (None before the
                first tap).

        Returns:
            Tensor | None: The updated running sum.
        """
        return self.accumulate(index, self.project(index, tokens), running_sum)

    def project(self, index: int, tokens: torch.Tensor) -> Optional[torch.Tensor]:
        """The first half of :meth:`tap`: ``tokens @ A_i^T``, shape (B, N,
        rank), or None where block ``index`` is not tapped. What it keeps for
        backward is the tokens (``A_i``'s gradient needs them)."""
        key = str(index)
        if key not in self.down_projs:
            return None
        return F.linear(tokens, self.down_projs[key])

    def accumulate(self, index: int, projected: Optional[torch.Tensor],
                   running_sum: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """The second half of :meth:`tap`: the running sum plus
        ``projected @ B_i^T`` (restarted at the first block of a stage;
        unchanged where ``projected`` is None). ``project`` then
        ``accumulate`` computes exactly :meth:`tap`, whatever runs between
        them."""
        if index > 0 and self.stages[index] != self.stages[index - 1]:
            running_sum = None
        if projected is None:
            return running_sum
        side = F.linear(projected, self.up_projs[str(index)])
        return side if running_sum is None else running_sum + side

    def recomputed_prefix_taps(self, run_prefix: Callable, prefix_input: torch.Tensor
                               ) -> Tuple[torch.Tensor, torch.Tensor, Any]:
        """The running sum after the taps of a frozen prefix (blocks ``0..M``)
        without keeping the tapped block inputs for backward.

        ``run_prefix(prefix_input, on_tap)`` runs the frozen prefix, calls
        ``on_tap(i, tokens)`` with the input of every block ``i <= M`` and
        returns ``(output of block M, aux)``. Forward runs it once (no grad)
        and accumulates h with :meth:`tap`; backward keeps only
        ``prefix_input``, runs the prefix again (no grad) and forms every
        tap's ``A_i``/``B_i`` gradient from dL/dh, which all prefix taps share
        since h is first used at block M. Gradients equal those of :meth:`tap`
        on stored inputs; the cost is a second prefix forward in backward.
        The prefix must be deterministic (no drop path/dropout) and frozen.

        Args:
            run_prefix (Callable): The prefix, see above.
            prefix_input (Tensor): Its input (e.g. the images).

        Returns:
            tuple: h after tap ``M``, the output of block ``M`` (no grad) and
            ``aux`` from the forward run.
        """
        # Every tap <= M lies in M's stage (others are refused at build time),
        # so all of them are summed unchanged into the h that block M uses.
        keys = [str(i) for i in self.taps if i <= self.start]
        params = [p for key in keys for p in (self.down_projs[key], self.up_projs[key])]
        aux = {}

        def run(inputs, on_tap):
            out, aux['value'] = run_prefix(inputs, on_tap)
            return out

        running_sum, out = _RecomputedPrefixTaps.apply(self, run, keys, prefix_input, *params)
        return running_sum, out, aux['value']

    def side_output(self, index: int, running_sum: torch.Tensor,
                    grid: Tuple[int, int], num_extra_tokens: int = 0) -> torch.Tensor:
        """``g(swish_beta(h))``: what block ``index`` adds to its output.

        Args:
            index (int): Global index of the block that just ran.
            running_sum (Tensor): h, shape (B, num_extra_tokens + H*W, C).
            grid (tuple[int, int]): (H, W) of the patch tokens.
            num_extra_tokens (int): Leading tokens (cls) that get swish only.
        """
        activated = swish(running_sum, self.beta)
        conv = self.dwconvs[str(self.stages[index])] if len(self.dwconvs) else None
        if conv is None:
            return activated
        batch, num_tokens, dims = activated.shape
        height, width = grid
        if num_tokens != num_extra_tokens + height * width:
            raise ValueError(f'csn: {num_tokens} tokens do not match {num_extra_tokens} extra '
                             f'tokens + a {height}x{width} patch grid')
        extra, patches = activated[:, :num_extra_tokens], activated[:, num_extra_tokens:]
        patches = patches.transpose(1, 2).reshape(batch, dims, height, width)
        patches = conv(patches).flatten(2).transpose(1, 2)
        return torch.cat([extra, patches], dim=1) if num_extra_tokens else patches

    def add_back(self, index: int, tokens: torch.Tensor,
                 running_sum: Optional[torch.Tensor], grid: Tuple[int, int],
                 num_extra_tokens: int = 0, recompute: Optional[bool] = None) -> torch.Tensor:
        """Add the side output to the output ``tokens`` of block ``index``
        when it adds back (see ``add_back_blocks``); otherwise return
        ``tokens`` unchanged. ``recompute`` overrides
        ``recompute_side_output`` (e.g. inside a checkpoint that recomputes
        the side output anyway)."""
        if not self.adds_back_after(index):
            return tokens
        recompute = self.recompute_side_output if recompute is None else recompute
        if recompute and running_sum.requires_grad:
            # Swish and convolution draw no random numbers: no RNG state to keep.
            side = cp.checkpoint(self.side_output, index, running_sum, grid,
                                 num_extra_tokens, use_reentrant=False,
                                 preserve_rng_state=False)
        else:
            side = self.side_output(index, running_sum, grid, num_extra_tokens)
        return tokens + side

    def extra_repr(self) -> str:
        sparse = (self.add_back_blocks != list(range(self.start, self.num_layers)))
        return (f'rank={self.rank}, taps={self.taps}, start={self.start}, '
                + (f'add_back_blocks={self.add_back_blocks}, ' if sparse else '')
                + f'beta={self.beta}, dwconv_kernel={self.dwconv_kernel}')


def low_rank(tokens: torch.Tensor, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """One tap's side term ``tokens @ A^T @ B^T``."""
    return F.linear(F.linear(tokens, down), up)


def _autocast_state(device_type: str) -> dict:
    return dict(device_type=device_type, enabled=torch.is_autocast_enabled(device_type),
                dtype=torch.get_autocast_dtype(device_type))


class _RecomputedPrefixTaps(torch.autograd.Function):
    """See :meth:`CompactSideNetwork.recomputed_prefix_taps`."""

    @staticmethod
    def forward(ctx, csn, run_prefix, keys, prefix_input, *params):
        state = {}

        def on_tap(index, tokens):
            state['h'] = csn.tap(index, tokens, state.get('h'))

        out = run_prefix(prefix_input, on_tap)
        ctx.csn, ctx.run_prefix, ctx.keys = csn, run_prefix, keys
        # Backward recomputes under the forward's autocast, for equal gradients.
        ctx.autocast = _autocast_state(prefix_input.device.type)
        ctx.save_for_backward(prefix_input)
        ctx.mark_non_differentiable(out)  # the frozen prefix's output has no task gradient
        return state['h'], out

    @staticmethod
    def backward(ctx, grad_h, grad_out):
        prefix_input, = ctx.saved_tensors
        csn, grads = ctx.csn, {}

        def on_tap(index, tokens):
            key = str(index)
            if key not in ctx.keys:
                return
            down = csn.down_projs[key].detach().requires_grad_()
            up = csn.up_projs[key].detach().requires_grad_()
            # Every tap up to M is summed unchanged into h: its side term gets dL/dh.
            with torch.enable_grad(), torch.autocast(**ctx.autocast):
                side = low_rank(tokens, down, up)
            grads[key] = torch.autograd.grad(side, (down, up), grad_h)

        with torch.no_grad(), torch.autocast(**ctx.autocast):
            ctx.run_prefix(prefix_input, on_tap)
        return (None, None, None, None, *[g for key in ctx.keys for g in grads[key]])


def build_side_network(csn_cfg: Union[dict, 'CompactSideNetwork'],
                       **defaults) -> 'CompactSideNetwork':
    """Build the ``csn`` slot of a DTL backbone, filling in what the backbone
    knows (dims, depth, stages) unless the config already sets it."""
    if isinstance(csn_cfg, nn.Module):
        return csn_cfg
    if not isinstance(csn_cfg, dict) or 'type' not in csn_cfg:
        raise TypeError(f'csn must be a dict with a "type" key, got {csn_cfg!r}')
    cfg = dict(csn_cfg)
    for key, value in defaults.items():
        cfg.setdefault(key, value)
    # Resolve in mmpretrain's registry even under an mmdet default scope.
    cfg.setdefault('_scope_', 'mmpretrain')
    return MODELS.build(cfg)


__all__ = ['CompactSideNetwork', 'build_side_network', 'low_rank', 'swish']
