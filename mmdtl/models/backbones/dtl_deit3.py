"""DTL on mmpretrain's DeiT3 (DeiT III: layer-scaled blocks, position
embedding added before the cls token)."""
from mmpretrain.models.backbones import DeiT3
from mmpretrain.models.backbones.deit3 import DeiT3TransformerEncoderLayer
from mmpretrain.models.utils import resize_pos_embed
from mmpretrain.registry import MODELS

from ..dtl import DTLBackbone, ViTFamilyAdapter


class DeiT3Adapter(ViTFamilyAdapter):
    """``DeiT3``: the position embedding covers the patch tokens only and is
    added before the cls token is prepended; no ``pre_norm``."""

    def embed(self, images):
        bb = self.backbone
        x, grid = bb.patch_embed(images)
        x = x + resize_pos_embed(bb.pos_embed, bb.patch_resolution, grid,
                                 mode=bb.interpolate_mode, num_extra_tokens=0)
        x = bb.drop_after_pos(x)
        if bb.cls_token is not None:
            x = self.prepend_cls_token(x)
        return x, grid

    def block_sublayers(self, index, block, grid):
        # DeiT3's own block forward, split as it is (its MLP half normalises
        # with ln1, as the parent does).
        if type(block).forward is not DeiT3TransformerEncoderLayer.forward:
            return None
        return [lambda x: x + block.attn(block.ln1(x)),
                lambda x: block.ffn(block.ln1(x), identity=x)]


@MODELS.register_module()
class DTLDeiT3(DTLBackbone, DeiT3):
    """DeiT III fine-tuned with Disentangled Transfer Learning.

    A frozen :class:`mmpretrain.models.DeiT3` plus a Compact Side Network
    built from ``csn``, tapped and added back as in :class:`DTLViT`. The
    parent's defaults are kept (``out_type='cls_token'``, ``final_norm=True``:
    DeiT3 has no pooled-token norm); the cls token receives the swish of
    the running sum, the patch tokens DTL+'s DWConv of it.

    Args:
        csn (dict): Config of the side network; ``embed_dims`` and
            ``num_layers`` are filled in from the backbone.
        **kwargs: The DTL options of :class:`mmdtl.models.dtl.DTLOptions`
            and the other arguments of :class:`DeiT3`.
    """
    trunk_adapter = DeiT3Adapter
