"""The trunk adapter: what differs between the architectures DTL runs on.

:class:`DTLRunner` runs every trunk with one loop; an adapter only answers
the questions of this class for its trunk. A new trunk is one adapter (a
subclass of :class:`TrunkAdapter`) plus a backbone class that mixes
:class:`DTLBackbone` into the mmpretrain parent (see
``docs/adding_a_backbone.md``).

The *stream* is what flows between blocks (ViT/Swin: tokens ``(B, N, C)``;
ConvNeXt: maps ``(B, C, H, W)``); the side network always reads and writes
*tokens* ``(B, num_extra_tokens + H*W, C)``, which :meth:`tokens` and
:meth:`stream` convert. The *grid* is the ``(H, W)`` of the current stage.
"""
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn


class TrunkAdapter:
    """Base class of trunk adapters; subclasses implement the methods that
    raise ``NotImplementedError``.

    Args:
        backbone (nn.Module): The DTL backbone (an mmpretrain trunk).
    """

    def __init__(self, backbone: nn.Module):
        self.backbone = backbone
        self._stage_ends_cache = None

    # -- structure -------------------------------------------------------------
    def blocks(self) -> List[nn.Module]:
        """Every block, in execution order: the position is the global block
        index the side network uses (``csn.taps``, ``csn.start``)."""
        raise NotImplementedError

    def block_stages(self) -> List[int]:
        """The stage of every block (the running sum restarts at a new
        stage). Defaults to one stage."""
        return [0] * len(self.blocks())

    def block_dims(self) -> List[int]:
        """The token dimension of every block's input."""
        raise NotImplementedError

    def embedding_modules(self) -> List[nn.Module]:
        """Modules that run before block 0."""
        raise NotImplementedError

    def embedding_parameters(self) -> List[nn.Parameter]:
        """Parameters used before block 0 outside those modules (position
        embedding, cls token)."""
        return []

    def transition_modules(self, index: int) -> List[nn.Module]:
        """Modules that change the stream after block ``index`` (patch
        merging, a downsampling layer). Defaults to none."""
        return []

    def embedding_dropout(self) -> Sequence[nn.Module]:
        """Modules that may be stochastic before block 0 (dropout after the
        position embedding)."""
        drop = getattr(self.backbone, 'drop_after_pos', None)
        return [drop] if drop is not None else []

    num_extra_tokens = 0  # leading tokens outside the patch grid (cls)
    #: Names of layers whose weight the parent reads directly (not through the
    #: layer's forward); half-stored weights keep them fp32.
    weights_read_directly: Sequence[str] = ()

    # -- computation -----------------------------------------------------------
    def embed(self, images: torch.Tensor) -> Tuple[torch.Tensor, tuple]:
        """The stream entering block 0 and its grid."""
        raise NotImplementedError

    def call_block(self, index: int, block: nn.Module, x: torch.Tensor,
                   grid: tuple) -> torch.Tensor:
        """Run block ``index`` on the stream. Defaults to ``block(x)``."""
        return block(x)

    def block_sublayers(self, index: int, block: nn.Module,
                        grid: tuple) -> Optional[List[Callable[[torch.Tensor], torch.Tensor]]]:
        """The sub-layers of block ``index`` as functions of the stream whose
        composition is exactly :meth:`call_block` (the same ops in the same
        order), for ``checkpoint_sublayers``; None where the adapter does not
        know the block's forward (the option is then refused)."""
        return None

    def after_block(self, index: int, x: torch.Tensor,
                    grid: tuple) -> Tuple[torch.Tensor, tuple, list]:
        """What follows block ``index`` (after the side output was added):
        final norm, formatted outputs of ``out_indices``, stage transition.

        Returns:
            tuple: The stream, its grid and a list of outputs (usually empty).
        """
        raise NotImplementedError

    def outputs_before(self, start: int) -> List[int]:
        """The ``out_indices`` complete before block ``start`` adds back
        (features of the frozen prefix, which a cached or recomputed prefix
        does not compute). Defaults to stage outputs (Swin, ConvNeXt):
        ``out_indices`` index stages, each complete after its last block."""
        last = self.stage_last_blocks()
        return [i for i in self.backbone.out_indices if last[i] < start]

    # -- stages ----------------------------------------------------------------
    def stage_last_blocks(self) -> List[int]:
        """The global index of every stage's last block."""
        return list(self._stage_ends())

    def stage_ending_at(self, index: int) -> Optional[int]:
        """The stage whose last block is ``index``, else None (called after
        every block: a lookup)."""
        return self._stage_ends().get(index)

    def _stage_ends(self) -> Dict[int, int]:
        """Last block index -> stage, worked out once: an mmpretrain trunk's
        blocks and stages are fixed when the backbone is built."""
        if self._stage_ends_cache is None:
            stages = self.block_stages()
            self._stage_ends_cache = {
                i: stage for i, stage in enumerate(stages)
                if i + 1 == len(stages) or stages[i + 1] != stage}
        return self._stage_ends_cache

    # -- stream <-> tokens -----------------------------------------------------
    def tokens(self, x: torch.Tensor, grid: tuple) -> torch.Tensor:
        """The stream as tokens for the side network. Defaults to ``x``."""
        return x

    def stream(self, tokens: torch.Tensor, grid: tuple) -> torch.Tensor:
        """Tokens back to the stream (inverse of :meth:`tokens`)."""
        return tokens


class ViTFamilyAdapter(TrunkAdapter):
    """Plain ViTs of mmpretrain (``VisionTransformer`` and its subclasses):
    one stage, a token stream with ``num_extra_tokens`` leading tokens, a
    final norm after the last block, outputs after ``out_indices`` blocks."""

    def blocks(self) -> List[nn.Module]:
        return list(self.backbone.layers)

    def block_dims(self) -> List[int]:
        return [self.backbone.embed_dims] * len(self.backbone.layers)

    @property
    def num_extra_tokens(self) -> int:
        return self.backbone.num_extra_tokens

    def embedding_modules(self) -> List[nn.Module]:
        bb = self.backbone
        return [m for m in (bb.patch_embed, getattr(bb, 'pre_norm', None)) if m is not None]

    def embedding_parameters(self) -> List[nn.Parameter]:
        bb = self.backbone
        return [p for p in (getattr(bb, 'cls_token', None), getattr(bb, 'pos_embed', None))
                if isinstance(p, nn.Parameter)]

    def prepend_cls_token(self, x: torch.Tensor) -> torch.Tensor:
        cls_token = self.backbone.cls_token
        return torch.cat((cls_token.expand(len(x), -1, -1), x), dim=1)

    def after_block(self, index, x, grid):
        bb = self.backbone
        if index == len(bb.layers) - 1 and bb.final_norm:
            x = bb.ln1(x)
        outs = [bb._format_output(x, grid)] if index in bb.out_indices else []
        return x, grid, outs

    def outputs_before(self, start: int) -> List[int]:
        # Block M's own output is taken after its add-back.
        return [i for i in self.backbone.out_indices if i < start]
