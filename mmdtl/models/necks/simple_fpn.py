"""A ViTDet-style simple feature pyramid for plain (single-scale) ViTs.

mmdet's pip package does not ship ViTDet's ``SimpleFPN`` (it lives in
mmdet's ``projects/`` folder), so mmdtl provides its own, registered in
mmdet's ``MODELS`` so mmdet configs say ``type='SimpleFPN'``.
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp
from mmcv.cnn import ConvModule, build_norm_layer
from mmdet.registry import MODELS
from mmengine.model import BaseModule
from mmpretrain.models.utils import LayerNorm2d


@MODELS.register_module()
class SimpleFPN(BaseModule):
    """Simple feature pyramid of ViTDet (Li et al., ECCV 2022).

    The last feature map of a plain backbone (stride ``s``, ``C`` channels,
    e.g. a ViT/16 with ``out_type='featmap'``) is turned into four maps of
    strides ``s/4, s/2, s, 2s``:

    - ``s/4``: deconv 2x2 (C -> C/2), norm, GELU, deconv 2x2 (C/2 -> C/4);
    - ``s/2``: deconv 2x2 (C -> C/2);
    - ``s``: identity (C);
    - ``2s``: 2x2 max pooling (C).

    Each then goes through a 1x1 lateral conv and a 3x3 output conv to
    ``out_channels``, both followed by ``norm_cfg`` (LayerNorm over channels
    by default). Extra levels beyond four (``num_outs > 4``) are stride-2
    subsamplings of the last one (``max_pool2d(kernel_size=1, stride=2)``,
    as mmdet's FPN without extra convs and ViTDet's P6).

    Args:
        backbone_channel (int): Channels ``C`` of the backbone feature map.
        in_channels (Sequence[int]): Channels of the four pyramid inputs,
            which must be ``[C // 4, C // 2, C, C]``; kept as an argument
            for compatibility with ViTDet configs.
        out_channels (int): Channels of every output level.
        num_outs (int): Number of output levels, >= 4. Defaults to 5.
        conv_cfg (dict, optional): Config of the lateral/output convs.
            Defaults to None (Conv2d).
        norm_cfg (dict, optional): Norm after the first deconv and after
            every lateral/output conv. Defaults to a channel LayerNorm
            (mmpretrain's ``LayerNorm2d``; ``dict(type='mmpretrain.LN2d')``
            in configs).
        act_cfg (dict, optional): Activation of the lateral/output convs.
            Defaults to None, as ViTDet.
        start_level (int): First of the four levels to build: 1 skips the
            stride ``s/4`` level (its deconvs and convs are not built) for
            data without objects that small; ``num_outs`` counts from it.
            Defaults to 0.
        with_cp (bool): Activation checkpointing of every pyramid level
            (its upsampling/pooling, lateral and output conv run as one
            checkpointed unit): backward keeps only the backbone feature map
            and recomputes the level, instead of keeping every intermediate
            map (most of them at strides 4 and 8). Same outputs and
            gradients (no dropout or running statistics inside), one more
            forward of the pyramid per step. Defaults to False.
        init_cfg (dict | list[dict], optional): Initialisation config.
            Defaults to None (ConvModule's Kaiming init, PyTorch's default
            for the deconvs).
    """

    def __init__(self,
                 backbone_channel: int,
                 in_channels: Sequence[int],
                 out_channels: int,
                 num_outs: int = 5,
                 conv_cfg: Optional[dict] = None,
                 norm_cfg: Optional[dict] = dict(type=LayerNorm2d),
                 act_cfg: Optional[dict] = None,
                 start_level: int = 0,
                 with_cp: bool = False,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        if not isinstance(backbone_channel, int) or backbone_channel < 4 or backbone_channel % 4:
            raise ValueError(f'SimpleFPN: backbone_channel must be a positive multiple of 4, '
                             f'got {backbone_channel!r}')
        expected = [backbone_channel // 4, backbone_channel // 2, backbone_channel,
                    backbone_channel]
        if list(in_channels) != expected:
            raise ValueError(f'SimpleFPN: in_channels={list(in_channels)} does not match '
                             f'backbone_channel={backbone_channel}; the four pyramid inputs '
                             f'have {expected} channels')
        if start_level not in range(len(expected)):
            raise ValueError(f'SimpleFPN: start_level must be 0, 1, 2 or 3, got {start_level!r}')
        if not isinstance(num_outs, int) or num_outs < len(expected) - start_level:
            raise ValueError(f'SimpleFPN: num_outs must be an int >= {len(expected) - start_level} '
                             f'(4 - start_level), got {num_outs!r}')
        self.backbone_channel = backbone_channel
        self.in_channels = expected
        self.out_channels = out_channels
        self.num_ins = len(expected)
        self.num_outs = num_outs
        self.start_level = start_level
        self.with_cp = bool(with_cp)

        half, quarter = backbone_channel // 2, backbone_channel // 4
        if norm_cfg is not None:
            mid_norm = build_norm_layer(norm_cfg, half)[1]
        else:
            mid_norm = nn.Identity()
        self.fpn1 = nn.Sequential(
            nn.ConvTranspose2d(backbone_channel, half, 2, stride=2), mid_norm, nn.GELU(),
            nn.ConvTranspose2d(half, quarter, 2, stride=2)) if start_level == 0 else None
        if start_level > 1:
            self.fpn2 = None
        if start_level <= 1:
            self.fpn2 = nn.Sequential(nn.ConvTranspose2d(backbone_channel, half, 2, stride=2))
        self.fpn3 = nn.Sequential(nn.Identity())
        self.fpn4 = nn.Sequential(nn.MaxPool2d(kernel_size=2, stride=2))

        self.lateral_convs = nn.ModuleList()
        self.fpn_convs = nn.ModuleList()
        for channels in expected[start_level:]:
            self.lateral_convs.append(ConvModule(
                channels, out_channels, 1, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                act_cfg=act_cfg, inplace=False))
            self.fpn_convs.append(ConvModule(
                out_channels, out_channels, 3, padding=1, conv_cfg=conv_cfg,
                norm_cfg=norm_cfg, act_cfg=act_cfg, inplace=False))

    def forward(self, inputs: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
        """Build the pyramid from the last backbone output.

        Args:
            inputs (Sequence[Tensor]): Backbone outputs; the last one, shape
                (B, C, H, W) at stride ``s``, is used.

        Returns:
            tuple[Tensor]: ``num_outs`` maps of shape (B, out_channels, ., .)
            at strides ``s/4, s/2, s, 2s, 4s, ...`` (from ``start_level``).
        """
        x = inputs[-1] if isinstance(inputs, (list, tuple)) else inputs
        if not torch.is_tensor(x) or x.dim() != 4 or x.shape[1] != self.backbone_channel:
            got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(
                f'SimpleFPN expects the last backbone output to be a (B, '
                f'{self.backbone_channel}, H, W) feature map (model.neck.backbone_channel='
                f'{self.backbone_channel}), got {got}; set model.backbone.out_type='
                f'"featmap", make model.backbone.out_indices end with the block the '
                f'pyramid should read, and model.neck.backbone_channel to its channels '
                f'(embed dims)')
        branches = (self.fpn1, self.fpn2, self.fpn3, self.fpn4)
        checkpointed = self.with_cp and torch.is_grad_enabled()
        outs = []
        for level in range(self.start_level, self.num_ins):
            if checkpointed:
                outs.append(cp.checkpoint(self._level, level, branches[level], x,
                                          use_reentrant=False))
            else:
                outs.append(self._level(level, branches[level], x))
        for _ in range(self.num_outs - len(outs)):
            outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        return tuple(outs)

    def _level(self, level: int, branch: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """One pyramid level from the backbone map: what ``with_cp``
        recomputes in backward."""
        index = level - self.start_level
        return self.fpn_convs[index](self.lateral_convs[index](branch(x)))
