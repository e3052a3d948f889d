"""The one loop that runs a DTL backbone, whatever its trunk.

With ``M = csn.start``, blocks ``0..M`` (the *prefix*) never see
task-specific input. When they are frozen the runner computes them in one of
three ways and never records a graph for them:

- *plain*: run them without grad and tap each block input as it comes (the
  taps' gradients need those inputs, or their autocast copies, anyway);
- *cached* (``prefix_cache``): read those inputs and block ``M``'s output
  from :class:`PrefixFeatureCache`, computing only misses;
- *recomputed* (``recompute_prefix_taps``): run the taps in
  :meth:`CompactSideNetwork.recomputed_prefix_taps`, which keeps only the
  images and runs the prefix again in backward.

Block ``M``'s output then receives the side output, and every later block
runs as one *unit*, ``tap -> block -> add back``, checkpointed as a whole
with ``checkpoint_suffix``; a checkpointed unit keeps its input and the
running sum entering it, or its input only with ``recompute_running_sums``
(:class:`_RunningSums`); ``checkpoint_sublayers`` checkpoints the block's
sub-layers apart inside the unit. A trunk that is not frozen runs every block
as a unit, with grad. What differs between trunks is asked of the
:class:`TrunkAdapter`.
"""
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp

from ..frozen_linear import packed_linears
from ..prefix_cache import cache_applies


class DTLRunner:
    """Runs a :class:`DTLBackbone` with its adapter, side network and options.

    Args:
        backbone (nn.Module): The DTL backbone; the runner reads its
            ``dtl_trunk`` (adapter), ``csn``, ``dtl_options``,
            ``prefix_cache`` and ``frozen_linear_packs``.
    """

    def __init__(self, backbone: nn.Module):
        self.backbone = backbone

    @property
    def trunk(self):
        return self.backbone.dtl_trunk

    @property
    def csn(self):
        return self.backbone.csn

    # -- what the prefix is ------------------------------------------------------
    def prefix_modules(self) -> List[nn.Module]:
        """The trunk modules whose output cannot depend on the side network:
        the embedding, blocks ``0..M`` and the transitions between them."""
        trunk, start = self.trunk, self.csn.start
        modules = list(trunk.embedding_modules())
        for index, block in enumerate(trunk.blocks()[:start + 1]):
            modules.append(block)
            if index < start:
                modules += trunk.transition_modules(index)
        return modules

    def frozen_prefix(self) -> bool:
        """True when nothing up to block ``M`` can receive a gradient."""
        params = [p for m in self.prefix_modules() for p in m.parameters()]
        params += self.trunk.embedding_parameters()
        return not any(p.requires_grad for p in params)

    def check_options(self, options) -> None:
        """Refuse trunk-dependent options that cannot work: a stored or
        recomputed prefix must be deterministic and produce no outputs."""
        start = self.csn.start
        if options.checkpoint_sublayers:
            blocks = self.trunk.blocks()
            unknown = sorted({type(b).__name__ for i, b in enumerate(blocks)
                              if self.trunk.block_sublayers(i, b, None) is None})
            if unknown:
                raise ValueError(
                    f'{type(self.backbone).__name__}: checkpoint_sublayers: '
                    f'{type(self.trunk).__name__} does not name the '
                    f'sub-layers of {", ".join(unknown)} blocks (block_sublayers); remove '
                    f'checkpoint_sublayers (checkpoint_suffix alone checkpoints whole blocks)')
        for option, enabled, where in (('prefix_cache', options.prefix_cache is not None,
                                        'cached'),
                                       ('recompute_prefix_taps', options.recompute_prefix_taps,
                                        'recomputed')):
            if not enabled:
                continue
            self.check_deterministic_prefix(option)
            early = self.trunk.outputs_before(start)
            if early:
                raise ValueError(f'{option}: out_indices {early} lie in the {where} prefix '
                                 f'(they are complete before block csn.start={start} adds '
                                 f'back), whose features are not computed; use later '
                                 f'out_indices or remove {option}')

    def check_deterministic_prefix(self, option: str) -> None:
        """Refuse drop path or dropout up to block ``M`` for ``option``."""
        start = self.csn.start
        stochastic = [i for i, block in enumerate(self.trunk.blocks()[:start + 1])
                      if _stochastic(block)]
        embedding = any(_stochastic(m) for m in self.trunk.embedding_dropout())
        if stochastic or embedding:
            raise ValueError(
                f'{option} needs a deterministic prefix, but blocks {stochastic} (<= '
                f'csn.start={start}) use drop path/dropout during training; set '
                f'drop_path_rate=0 and drop_rate=0, or remove {option}')

    # -- forward -----------------------------------------------------------------
    def forward(self, images: torch.Tensor) -> tuple:
        with packed_linears(self.backbone.frozen_linear_packs, images):
            return self._forward(images)

    def _forward(self, images: torch.Tensor) -> tuple:
        bb, csn, trunk = self.backbone, self.csn, self.trunk
        start, grad_enabled = csn.start, torch.is_grad_enabled()
        outs: list = []
        if self.frozen_prefix():
            if cache_applies(bb.prefix_cache, bb.training, True):
                running_sum, x, grid = self.tap_prefix(
                    *bb.prefix_cache.fetch(bb, images, self.prefix_features))
            elif bb.dtl_options.recompute_prefix_taps and grad_enabled:
                running_sum, x, grid = csn.recomputed_prefix_taps(self._recompute_prefix, images)
            else:
                running_sum, x, grid = self.tapped_prefix(images, outs)
            # Block M's output receives the side output; the suffix follows.
            x = self.add_back(start, x, running_sum, grid)
            x, grid = self._after_block(start, x, grid, outs)
            first = start + 1
        else:
            x, grid = trunk.embed(images)
            running_sum, first = None, 0
        blocks, sums = trunk.blocks(), None
        for index in range(first, len(blocks)):
            if bb.dtl_options.checkpoint_suffix and grad_enabled and x.requires_grad:
                # Tap, block and add-back in one checkpoint: backward keeps only
                # the block input and the running sum (or, recomputing the sums,
                # only the block input). The RNG state is kept for the
                # recomputation only where the block draws random numbers.
                rng = _stochastic(blocks[index])
                if bb.dtl_options.recompute_running_sums:
                    # Once the stream needs grad, every later unit is checkpointed.
                    sums = sums or _RunningSums(self.csn, running_sum, index)
                    x, running_sum = cp.checkpoint(self.unit, index, blocks[index], x, None,
                                                   grid, sums, True, use_reentrant=False,
                                                   preserve_rng_state=rng)
                else:
                    x, running_sum = cp.checkpoint(self.unit, index, blocks[index], x,
                                                   running_sum, grid, None, True,
                                                   use_reentrant=False, preserve_rng_state=rng)
            else:
                x, running_sum = self.unit(index, blocks[index], x, running_sum, grid)
            x, grid = self._after_block(index, x, grid, outs)
        if sums is not None:
            sums.close()
        return tuple(outs)

    def _after_block(self, index: int, x: torch.Tensor, grid: tuple,
                     outs: list) -> Tuple[torch.Tensor, tuple]:
        x, grid, new_outs = self.trunk.after_block(index, x, grid)
        outs.extend(new_outs)
        return x, grid

    def unit(self, index: int, block: nn.Module, x: torch.Tensor,
             running_sum: Optional[torch.Tensor], grid: tuple,
             sums: Optional['_RunningSums'] = None, checkpointed: bool = False
             ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Tap, block ``index`` and add-back: what ``checkpoint_suffix``
        recomputes in backward (``checkpointed``). With ``sums``
        (``recompute_running_sums``) the running sum is read from there
        instead of ``running_sum``."""
        # Checkpointing recomputes the block during backward, outside forward.
        with packed_linears(self.backbone.frozen_linear_packs, x):
            # The tap in two halves around the block (the same ops): its
            # projection to the rank before, whose backward then comes after
            # the block's; the running sum after, so that no (B, N, C) sum
            # exists while the block runs (its recomputation is a peak).
            projected = self.project(index, x, grid, checkpointed)
            out = self.call_block(index, block, x, grid, checkpointed)
            if sums is not None:
                running_sum = sums.before(index)
            running_sum = self.csn.accumulate(index, projected, running_sum)
        if sums is not None:
            sums.after(index, projected, running_sum)
        # The unit's checkpoint recomputes the side output anyway; a nested
        # checkpoint would keep the running sum that sums spares.
        out = self.add_back(index, out, running_sum, grid, False if sums else None)
        return out, running_sum

    def call_block(self, index: int, block: nn.Module, x: torch.Tensor, grid: tuple,
                   checkpointed: bool = False) -> torch.Tensor:
        """Block ``index`` on the stream; in a checkpointed unit with
        ``checkpoint_sublayers``, each sub-layer under its own checkpoint:
        the unit's recomputation then keeps only the sub-layers' inputs,
        and one sub-layer's activations at a time exist in its backward."""
        if not (checkpointed and self.backbone.dtl_options.checkpoint_sublayers):
            return self.trunk.call_block(index, block, x, grid)
        rng, packs = _stochastic(block), self.backbone.frozen_linear_packs

        def run(sublayer, x):
            # Its recomputation runs in backward, after the unit's has ended.
            with packed_linears(packs, x):
                return sublayer(x)

        for sublayer in self.trunk.block_sublayers(index, block, grid):
            x = cp.checkpoint(run, sublayer, x, use_reentrant=False, preserve_rng_state=rng)
        return x

    def project(self, index: int, x: torch.Tensor, grid: tuple,
                checkpointed: bool = False) -> Optional[torch.Tensor]:
        """The tap's projection of block ``index``'s input ``x`` to the rank
        (:meth:`CompactSideNetwork.project`).

        Under autocast the projection keeps a half copy of the input for
        ``A_i``'s gradient. A checkpointed unit keeps its fp32 input anyway,
        so there the copy is made again in backward instead (the same cast):
        the unit's backward then runs without it."""
        csn, trunk = self.csn, self.trunk
        if str(index) not in csn.down_projs:
            return None
        device = x.device.type
        if (checkpointed and torch.is_autocast_enabled(device)
                and x.dtype != torch.get_autocast_dtype(device)):
            return cp.checkpoint(lambda x: csn.project(index, trunk.tokens(x, grid)), x,
                                 use_reentrant=False, preserve_rng_state=False)
        return csn.project(index, trunk.tokens(x, grid))

    def add_back(self, index: int, x: torch.Tensor, running_sum: Optional[torch.Tensor],
                 grid: tuple, recompute_side_output: Optional[bool] = None) -> torch.Tensor:
        """The stream after block ``index`` plus the side output where the
        side network adds back (every block from ``M``, or its sparse set)."""
        if not self.csn.adds_back_after(index):
            return x
        return self.add_side(self.csn, index, x, running_sum, grid, recompute_side_output)

    def add_side(self, csn: nn.Module, index: int, x: torch.Tensor,
                 running_sum: torch.Tensor, grid: tuple,
                 recompute_side_output: Optional[bool] = None) -> torch.Tensor:
        """``csn``'s add-back on the stream ``x`` (any side network: the
        multi-task model passes each task's)."""
        trunk = self.trunk
        tokens = csn.add_back(index, trunk.tokens(x, grid), running_sum, grid,
                              trunk.num_extra_tokens, recompute=recompute_side_output)
        return trunk.stream(tokens, grid)

    # -- the frozen prefix -------------------------------------------------------
    def run_prefix(self, images: torch.Tensor, on_tap: Callable,
                   outs: Optional[list] = None) -> Tuple[torch.Tensor, tuple]:
        """Blocks ``0..M`` without grad, calling ``on_tap(i, x, grid)`` with
        the stream entering every block ``i``.

        Args:
            images (Tensor): The input images.
            on_tap (Callable): Receives every prefix block's index, input
                stream and grid.
            outs (list, optional): Receives the outputs produced before
                block ``M`` (``out_indices`` inside the prefix).

        Returns:
            tuple: The output of block ``M`` (before its add-back) and its grid.
        """
        trunk, start = self.trunk, self.csn.start
        # Also called from backward (recomputed taps), outside forward.
        with packed_linears(self.backbone.frozen_linear_packs, images):
            with torch.no_grad():
                x, grid = trunk.embed(images)
            for index, block in enumerate(trunk.blocks()[:start + 1]):
                on_tap(index, x, grid)
                with torch.no_grad():
                    x = trunk.call_block(index, block, x, grid)
                if index < start:
                    # Outside no_grad: an output norm a user unfroze still trains.
                    x, grid, new_outs = trunk.after_block(index, x, grid)
                    if outs is not None:
                        outs.extend(new_outs)
        return x, grid

    def prefix_features(self, images: torch.Tensor, outs: Optional[list] = None
                        ) -> Tuple[Dict[int, torch.Tensor], torch.Tensor, tuple]:
        """What the side network and block ``M + 1`` need from the frozen
        prefix: the input streams of the tapped blocks ``<= M``, the output of
        block ``M`` and its grid (what :class:`PrefixFeatureCache` stores)."""
        taps = set(self.csn.taps)
        tap_inputs = {}

        def keep(index, x, grid):
            if index in taps:
                tap_inputs[index] = x

        x, grid = self.run_prefix(images, keep, outs)
        return tap_inputs, x, tuple(grid)

    def tapped_prefix(self, images: torch.Tensor, outs: list
                      ) -> Tuple[Optional[torch.Tensor], torch.Tensor, tuple]:
        """The plain prefix: blocks ``0..M`` without grad, each tap made (with
        grad) as soon as its block input exists, so under autocast only the
        tap's half copy outlives the fp32 input.

        Returns:
            tuple: The running sum, block ``M``'s output and its grid.
        """
        state = {}

        def tap(index, x, grid):
            state['sum'] = self.csn.tap(index, self.trunk.tokens(x, grid), state.get('sum'))

        x, grid = self.run_prefix(images, tap, outs)
        return state.get('sum'), x, grid

    def tap_prefix(self, tap_inputs: Dict[int, torch.Tensor], x: torch.Tensor, grid: tuple
                   ) -> Tuple[Optional[torch.Tensor], torch.Tensor, tuple]:
        """The running sum after the taps of blocks ``0..M`` on their stored
        inputs (a prefix-cache hit), with block ``M``'s output and grid passed
        through. Taps live in
        block ``M``'s stage (the side network refuses others), so they share
        its grid. Each input is dropped once tapped: under autocast a tap keeps
        only its half copy for backward, and the fp32 input need not stay."""
        running_sum = None
        for index in range(self.csn.start + 1):
            tap_input = tap_inputs.pop(index, None)
            tokens = None if tap_input is None else self.trunk.tokens(tap_input, grid)
            del tap_input
            running_sum = self.csn.tap(index, tokens, running_sum)
            del tokens
        return running_sum, x, grid

    def _recompute_prefix(self, images: torch.Tensor, on_tap: Callable
                          ) -> Tuple[torch.Tensor, tuple]:
        """:meth:`run_prefix` in the form ``recomputed_prefix_taps`` calls:
        ``on_tap(i, tokens)``, returns ``(output of block M, grid)``."""
        return self.run_prefix(
            images, lambda index, x, grid: on_tap(index, self.trunk.tokens(x, grid)))


class _RunningSums:
    """The running sums of a checkpointed suffix, kept as the sum entering
    its first unit (the *anchor*) and each unit's tap projected to the rank,
    shape (B, N, rank) (``recompute_running_sums``).

    In forward every unit reads the live sum and leaves its own for the next
    unit, so no checkpoint holds a (B, N, C) sum. When backward recomputes
    unit ``k`` it reads the sum entering it again: the anchor plus the
    up-projections of units ``first..k-1``'s projected taps, the same ops in
    the same order (under the autocast state the checkpoint restores), hence
    the same bits. Units are recomputed last to first, so this costs
    ``(n - 1) n / 2`` up-projections and additions of a (B, N, C) sum for
    ``n`` units.

    Args:
        csn (CompactSideNetwork): The side network.
        anchor (Tensor | None): The running sum entering unit ``first``.
        first (int): The first checkpointed unit.
    """

    def __init__(self, csn: nn.Module, anchor: Optional[torch.Tensor], first: int):
        self.csn, self.anchor, self.first = csn, anchor, first
        self.projected: Dict[int, Optional[torch.Tensor]] = {}
        self.live, self.live_index = anchor, first

    def before(self, index: int) -> Optional[torch.Tensor]:
        """The running sum entering unit ``index``: the live one in forward,
        recomputed (no grad) when backward recomputes the unit."""
        if index == self.live_index:
            return self.live
        running_sum = self.anchor
        with torch.no_grad():
            for j in range(self.first, index):
                running_sum = self.csn.accumulate(j, self.projected[j], running_sum)
        return running_sum

    def after(self, index: int, projected: Optional[torch.Tensor],
              running_sum: Optional[torch.Tensor]) -> None:
        """Unit ``index`` projected its tap to ``projected`` and left
        ``running_sum`` (forward only)."""
        if index == self.live_index:
            self.projected[index] = None if projected is None else projected.detach()
            self.live, self.live_index = running_sum, index + 1

    def close(self) -> None:
        """Forward is over: keep no live sum; every later read recomputes."""
        self.live, self.live_index = None, None


def _stochastic(module: nn.Module) -> bool:
    """Whether ``module`` uses drop path or dropout during training: a
    dropout module, a drop path, or a dropout rate kept as a float (e.g.
    mmpretrain's ``MultiheadAttention.attn_drop``, passed to the attention
    kernel)."""
    for m in module.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            return True
        if any(isinstance(value, float) and value > 0 and 'drop' in name
               for name, value in vars(m).items()):
            return True
    return False
