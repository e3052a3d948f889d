"""DTL on mmpretrain's ViTEVA02 (EVA-02): blocks that take the patch grid as a
second argument for their rotary position embedding."""
from mmpretrain.models.backbones import ViTEVA02
from mmpretrain.models.backbones.vit_eva02 import EVA02EndcoderLayer
from mmpretrain.registry import MODELS

from ..dtl import DTLBackbone
from .dtl_vit import ViTAdapter


class EVA02Adapter(ViTAdapter):
    """``ViTEVA02``: embedded as ``VisionTransformer``; every block is called
    as ``layer(x, patch_resolution)`` (the rotary embedding is laid over the
    current patch grid)."""

    def call_block(self, index, block, x, grid):
        return block(x, grid)

    def block_sublayers(self, index, block, grid):
        # EVA-02's own block forward, split where it adds its first residual.
        if type(block).forward is not EVA02EndcoderLayer.forward:
            return None
        return [lambda x: x + block.drop_path(block.attn(block.norm1(x), grid)),
                lambda x: x + block.drop_path(block.mlp(block.norm2(x)))]


@MODELS.register_module()
class DTLViTEVA02(DTLBackbone, ViTEVA02):
    """EVA-02 fine-tuned with Disentangled Transfer Learning.

    A frozen :class:`mmpretrain.models.ViTEVA02` plus a Compact Side Network
    built from ``csn``, tapped and added back as in :class:`DTLViT`; each
    block still receives the patch grid for its rotary embedding.

    Args:
        csn (dict): Config of the side network; ``embed_dims`` and
            ``num_layers`` are filled in from the backbone.
        **kwargs: The DTL options of :class:`mmdtl.models.dtl.DTLOptions`
            and the other arguments of :class:`ViTEVA02`.
    """
    trunk_adapter = EVA02Adapter
