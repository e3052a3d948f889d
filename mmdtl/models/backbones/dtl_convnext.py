"""DTL on mmpretrain's ConvNeXt: a convolutional trunk whose stream is a
feature map; the side network reads it channels-last as tokens."""
from typing import List

from mmpretrain.models.backbones import ConvNeXt
from mmpretrain.registry import MODELS

from ..dtl import DTLBackbone, TrunkAdapter


class ConvNeXtAdapter(TrunkAdapter):
    """``ConvNeXt``: the stem is ``downsample_layers[0]``; blocks are
    numbered globally across its stages and called as ``block(x)`` on
    ``(B, C, H, W)`` maps; after a stage's last block come its output
    (``norm{i}``, optionally after global pooling) and the next stage's
    downsampling layer. The side network sees the map as ``H*W`` tokens of
    ``C`` channels (channels-last); DTL+'s DWConv runs on the stage's grid."""

    def blocks(self):
        return [block for stage in self.backbone.stages for block in stage]

    def block_stages(self) -> List[int]:
        return [i for i, stage in enumerate(self.backbone.stages) for _ in stage]

    def block_dims(self) -> List[int]:
        bb = self.backbone
        return [bb.channels[i] for i, stage in enumerate(bb.stages) for _ in stage]

    def embedding_modules(self):
        return [self.backbone.downsample_layers[0]]

    def embedding_dropout(self):
        return []

    def transition_modules(self, index: int):
        stage = self.stage_ending_at(index)
        if stage is None or stage + 1 >= len(self.backbone.stages):
            return []
        return [self.backbone.downsample_layers[stage + 1]]

    def embed(self, images):
        x = self.backbone.downsample_layers[0](images)
        return x, tuple(x.shape[-2:])

    def after_block(self, index, x, grid):
        bb, s = self.backbone, self.stage_ending_at(index)
        if s is None:
            return x, grid, []
        outs = []
        if s in bb.out_indices:
            norm = getattr(bb, f'norm{s}')
            if bb.gap_before_final_norm:
                outs.append(norm(x.mean([-2, -1], keepdim=True)).flatten(1))
            else:
                outs.append(norm(x))
        if s + 1 < len(bb.stages):
            x = bb.downsample_layers[s + 1](x)
            grid = tuple(x.shape[-2:])
        return x, grid, outs

    def tokens(self, x, grid):
        return x.flatten(2).transpose(1, 2)

    def stream(self, tokens, grid):
        return tokens.transpose(1, 2).reshape(len(tokens), -1, *grid)


@MODELS.register_module()
class DTLConvNeXt(DTLBackbone, ConvNeXt):
    """ConvNeXt fine-tuned with Disentangled Transfer Learning.

    A frozen :class:`mmpretrain.models.ConvNeXt` (v1 or v2, any arch) plus a
    Compact Side Network built from ``csn``. As on Swin, blocks are numbered
    globally (ConvNeXt-T: 0-17), the running sum restarts at every stage and
    each stage that adds back owns a depthwise conv; the taps read block
    input maps channels-last, and the side output is added to block output
    maps. The parent's outputs (``out_indices``, ``gap_before_final_norm``)
    are kept: pooled features for classification, maps for dense tasks.

    Args:
        csn (dict): Config of the side network; ``embed_dims``,
            ``num_layers`` and ``stages`` are filled in from the backbone.
        **kwargs: The DTL options of :class:`mmdtl.models.dtl.DTLOptions`
            and the other arguments of :class:`ConvNeXt`.
    """
    trunk_adapter = ConvNeXtAdapter
