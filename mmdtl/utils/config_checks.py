"""Checks of a dense-prediction config that are cheap to run before training.

A detector or segmentor whose backbone outputs do not reach its neck (too
few ``out_indices`` for the neck's ``in_channels``, other channels, a
``cls_token`` output where a feature map is needed) otherwise fails deep in
mmdet/mmseg with a bare ``AssertionError`` or a convolution shape error,
after the data pipeline and the pre-trained weights were loaded.
:func:`check_backbone_reaches_neck` builds the backbone alone, runs it once on
a small blank image without gradients and compares what comes out with what
the neck config expects, naming the config keys to change.

Which neck reads what:

- a neck with ``backbone_channel`` (mmdtl's ``SimpleFPN``) reads the last
  backbone output, a ``(B, backbone_channel, H, W)`` map;
- a neck with a list of ``in_channels`` (mmdet's ``FPN``, ``PAFPN``,
  ``ChannelMapper``; mmseg's ``MultiLevelNeck``, ...) reads every backbone
  output, one per entry, in order;
- other necks (or none) are not checked.
"""
import copy
import importlib
from typing import List, Optional, Sequence, Tuple

import torch

Shape = Tuple[int, ...]


def backbone_output_shapes(backbone: torch.nn.Module,
                           img_size: Tuple[int, int] = (64, 64),
                           in_channels: int = 3) -> List[Shape]:
    """Shapes of the outputs of ``backbone`` on one blank image.

    Runs in eval mode without gradients and restores the training mode.

    Args:
        backbone (nn.Module): A built backbone returning a tensor or a
            sequence of tensors.
        img_size (tuple[int, int]): Height and width of the blank image.
        in_channels (int): Its channels. Defaults to 3.
    """
    was_training = backbone.training
    backbone.eval()
    try:
        param = next(backbone.parameters(), None)
        device = param.device if param is not None else torch.device('cpu')
        with torch.no_grad():
            outs = backbone(torch.zeros(1, in_channels, *img_size, device=device))
    finally:
        backbone.train(was_training)
    if torch.is_tensor(outs):
        outs = (outs, )
    return [tuple(out.shape) if torch.is_tensor(out) else () for out in outs]


def checked_neck(neck_cfg) -> Optional[dict]:
    """The neck config these checks can compare with backbone outputs (the
    first of a list of necks), or None: one with ``backbone_channel`` or a
    list of ``in_channels`` (see the module docstring)."""
    if isinstance(neck_cfg, (list, tuple)):
        neck_cfg = neck_cfg[0] if neck_cfg else None
    if isinstance(neck_cfg, dict) and ('backbone_channel' in neck_cfg or isinstance(
            neck_cfg.get('in_channels'), (list, tuple))):
        return neck_cfg
    return None


def check_neck_inputs(neck_cfg: Optional[dict], shapes: Sequence[Shape],
                      backbone_cfg: Optional[dict] = None, source: str = 'the config') -> None:
    """Raise ``ValueError`` when backbone outputs of ``shapes`` cannot feed
    the neck of ``neck_cfg``.

    Args:
        neck_cfg (dict, optional): ``model.neck`` (a list of necks: the
            first one is checked). None: nothing to check.
        shapes (Sequence[tuple]): Shapes of the backbone outputs, in order
            (see :func:`backbone_output_shapes`).
        backbone_cfg (dict, optional): ``model.backbone``, quoted in the
            message (``out_indices``, ``out_type``).
        source (str): The config file, quoted in the message.
    """
    neck_cfg = checked_neck(neck_cfg)
    if neck_cfg is None:
        return
    backbone_cfg = backbone_cfg or {}
    neck_type = neck_cfg.get('type', 'neck')
    given = (f'model.backbone.out_indices={backbone_cfg.get("out_indices", "(default)")!r}'
             + (f', model.backbone.out_type={backbone_cfg["out_type"]!r}'
                if 'out_type' in backbone_cfg else ''))
    maps = [s for s in shapes if len(s) == 4]
    channels = [s[1] if len(s) == 4 else None for s in shapes]

    if 'backbone_channel' in neck_cfg:  # SimpleFPN: the last output only
        want = neck_cfg['backbone_channel']
        last = shapes[-1] if shapes else ()
        if len(last) != 4 or last[1] != want:
            raise ValueError(
                f'{source}: model.neck ({neck_type}) reads the last backbone output as a '
                f'(B, {want}, H, W) feature map (model.neck.backbone_channel={want}), but the '
                f'backbone ({given}) gives outputs of shapes {shapes}. Set '
                f'model.backbone.out_type="featmap", end model.backbone.out_indices with the '
                f'block the pyramid reads, and set model.neck.backbone_channel to its '
                f'channels')
        return

    want = neck_cfg.get('in_channels')
    if not isinstance(want, (list, tuple)):
        return
    want = list(want)
    if len(maps) != len(shapes):
        raise ValueError(
            f'{source}: model.neck ({neck_type}) reads (B, C, H, W) feature maps, one per '
            f'entry of model.neck.in_channels={want}, but the backbone ({given}) gives '
            f'outputs of shapes {shapes}. Make the backbone return feature maps (e.g. '
            f'model.backbone.out_type="featmap" for a ViT)')
    if len(shapes) != len(want):
        raise ValueError(
            f'{source}: the backbone outputs do not reach the neck: {given} gives '
            f'{len(shapes)} feature maps (channels {channels}), but model.neck '
            f'({neck_type}) expects {len(want)}, one per entry of model.neck.in_channels='
            f'{want}. List one model.backbone.out_indices entry per neck input, or set '
            f'model.neck.in_channels={channels} (and the levels of the heads after it)')
    if channels != want:
        raise ValueError(
            f'{source}: the backbone outputs do not reach the neck: {given} gives feature '
            f'maps with channels {channels}, but model.neck ({neck_type}) expects '
            f'model.neck.in_channels={want}. Set model.neck.in_channels={channels}, or '
            f'choose the model.backbone.out_indices whose outputs have the channels the '
            f'neck expects')


def check_backbone_reaches_neck(cfg, img_size: Optional[Tuple[int, int]] = None) -> None:
    """Build ``cfg.model.backbone`` alone and check its outputs against
    ``cfg.model.neck`` (see the module docstring); raise ``ValueError``
    naming ``model.backbone.out_indices`` and ``model.neck.in_channels``.

    No checkpoint is loaded (``init_cfg`` is dropped): shapes do not depend
    on weights. Meant to run before training (``tools/train.py``) and by the
    analysis tools.

    Args:
        cfg (mmengine.Config): A whole mmdet/mmseg config (``model``,
            optional ``default_scope`` and ``custom_imports``).
        img_size (tuple[int, int], optional): Size of the blank test image.
            Defaults to 64x64, or twice the data preprocessor's
            ``pad_size_divisor`` when that is larger.
    """
    model = cfg.get('model', {})
    neck_cfg = model.get('neck')
    backbone_cfg = model.get('backbone')
    if backbone_cfg is None or checked_neck(neck_cfg) is None:  # nothing to compare: build nothing
        return
    source = getattr(cfg, 'filename', None) or 'the config'
    if img_size is None:
        divisor = (model.get('data_preprocessor') or {}).get('pad_size_divisor') or 1
        side = max(64, 2 * int(divisor))
        img_size = (side, side)
    backbone = build_backbone(cfg)
    # Grey-image trunks (the demo ViT) say so in the backbone or the preprocessor.
    mean = (model.get('data_preprocessor') or {}).get('mean')
    in_channels = backbone_cfg.get('in_channels', len(mean) if mean else 3)
    shapes = backbone_output_shapes(backbone, img_size, in_channels)
    check_neck_inputs(neck_cfg, shapes, backbone_cfg, source)


def build_backbone(cfg) -> torch.nn.Module:
    """``cfg.model.backbone`` built with the registry of the config's scope,
    without its ``init_cfg`` (no checkpoint read)."""
    from mmengine.registry import DefaultScope
    from mmengine.utils import import_modules_from_strings

    if cfg.get('custom_imports'):
        import_modules_from_strings(**cfg.custom_imports)
    scope = cfg.get('default_scope') or 'mmdet'
    importlib.import_module(f'{scope}.models')  # registers the scope's modules
    registry = importlib.import_module(f'{scope}.registry').MODELS
    backbone_cfg = copy.deepcopy(cfg.model.backbone)
    backbone_cfg['init_cfg'] = None
    with DefaultScope.overwrite_default_scope(scope):
        return registry.build(backbone_cfg)
