"""mmdet heads whose conv towers can run under activation checkpointing.

In a DTL detector the trunk is frozen, so the trainable neck and heads keep
most of the activations of a training step; with a ViT's single-scale
pyramid (:class:`SimpleFPN`) the RPN convs over the stride-4 level and the
4-conv box head over 512 RoIs per image dominate them. Each class here is
its mmdet parent plus ``with_cp``: the head's forward runs as one
``torch.utils.checkpoint`` unit (``use_reentrant=False``), so backward keeps
only its input and recomputes the convs. Outputs, losses and gradients are
the same (the towers hold convs, LayerNorm/GroupNorm and ReLU: no dropout,
no running statistics, nothing random); parameters and state-dict keys are
the parent's, so checkpoints load either way.
"""
from typing import Callable

import torch
import torch.utils.checkpoint as cp
from mmdet.models.dense_heads import RPNHead
from mmdet.models.roi_heads.bbox_heads import Shared4Conv1FCBBoxHead
from mmdet.models.roi_heads.mask_heads import FCNMaskHead
from mmdet.registry import MODELS


def checkpoint_if(enabled: bool, function: Callable, *args):
    """``function(*args)``, as a non-reentrant checkpoint when ``enabled``
    and autograd records (a no-grad test pass runs it plainly)."""
    if enabled and torch.is_grad_enabled():
        return cp.checkpoint(function, *args, use_reentrant=False)
    return function(*args)


class _WithCheckpoint:
    """Adds the ``with_cp`` argument to an mmdet head (mixed in first)."""

    def __init__(self, *args, with_cp: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.with_cp = bool(with_cp)


@MODELS.register_module()
class CheckpointRPNHead(_WithCheckpoint, RPNHead):
    """mmdet's :class:`RPNHead` with activation checkpointing per level.

    Args:
        with_cp (bool): Run each level's convs and classifiers as one
            checkpointed unit: backward keeps only the level's feature map
            (which the pyramid outputs anyway). Defaults to False.
        *args, **kwargs: As :class:`mmdet.models.RPNHead` (e.g.
            ``num_convs=2`` for ViTDet's RPN).
    """

    def forward_single(self, x: torch.Tensor):
        return checkpoint_if(self.with_cp, super().forward_single, x)


@MODELS.register_module()
class CheckpointShared4Conv1FCBBoxHead(_WithCheckpoint, Shared4Conv1FCBBoxHead):
    """mmdet's :class:`Shared4Conv1FCBBoxHead` (ViTDet's box head) with
    activation checkpointing.

    Args:
        with_cp (bool): Run the 4 convs, the fc and the classifiers as one
            checkpointed unit: backward keeps only the RoI features.
            Defaults to False.
        *args, **kwargs: As :class:`mmdet.models.Shared4Conv1FCBBoxHead`.
    """

    def forward(self, x: torch.Tensor):
        return checkpoint_if(self.with_cp, super().forward, x)


@MODELS.register_module()
class CheckpointFCNMaskHead(_WithCheckpoint, FCNMaskHead):
    """mmdet's :class:`FCNMaskHead` with activation checkpointing.

    Args:
        with_cp (bool): Run the convs, the upsampling and the mask logits as
            one checkpointed unit: backward keeps only the mask RoI features.
            Defaults to False.
        *args, **kwargs: As :class:`mmdet.models.FCNMaskHead`.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return checkpoint_if(self.with_cp, super().forward, x)
