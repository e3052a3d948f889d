"""DTL on mmpretrain's BEiTViT (BEiT v1/v2 backbones): blocks that take a
relative position bias as a second argument."""
from mmpretrain.models.backbones import BEiTViT
from mmpretrain.models.backbones.beit import BEiTTransformerEncoderLayer
from mmpretrain.models.utils import resize_pos_embed
from mmpretrain.registry import MODELS

from ..dtl import DTLBackbone, ViTFamilyAdapter


class BEiTAdapter(ViTFamilyAdapter):
    """``BEiTViT``: optional absolute position embedding, blocks called as
    ``layer(x, rel_pos_bias)`` where the bias is the shared
    ``RelativePositionBias`` table (``use_shared_rel_pos_bias=True``) or
    None (each block owns its table). Its attention reads ``qkv.weight``
    directly, so half-stored weights keep ``qkv`` in fp32."""
    weights_read_directly = ('qkv', )

    def embedding_modules(self):
        bb = self.backbone
        # The shared bias table serves every block, the prefix's included.
        return [m for m in (bb.patch_embed, bb.rel_pos_bias) if m is not None]

    def embed(self, images):
        bb = self.backbone
        x, grid = bb.patch_embed(images)
        if bb.cls_token is not None:
            x = self.prepend_cls_token(x)
        if bb.pos_embed is not None:
            x = x + resize_pos_embed(bb.pos_embed, bb.patch_resolution, grid,
                                     mode=bb.interpolate_mode,
                                     num_extra_tokens=bb.num_extra_tokens)
        return bb.drop_after_pos(x), grid

    def call_block(self, index, block, x, grid):
        # Recomputed per block (a gather on a small table) so a block is
        # self-contained under checkpointing and prefix recomputation.
        bias = self.backbone.rel_pos_bias
        return block(x, bias() if bias is not None else None)

    def block_sublayers(self, index, block, grid):
        # BEiT's own block forward, split where it adds its first residual;
        # the attention half computes the bias itself, as call_block does.
        if type(block).forward is not BEiTTransformerEncoderLayer.forward:
            return None
        table = self.backbone.rel_pos_bias

        def attention(x):
            attn = block.attn(block.ln1(x), rel_pos_bias=table() if table is not None else None)
            return x + block.drop_path(attn if block.gamma_1 is None else block.gamma_1 * attn)

        def mlp(x):
            ffn = block.ffn(block.ln2(x))
            return x + block.drop_path(ffn if block.gamma_2 is None else block.gamma_2 * ffn)

        return [attention, mlp]


@MODELS.register_module()
class DTLBEiT(DTLBackbone, BEiTViT):
    """BEiT fine-tuned with Disentangled Transfer Learning.

    A frozen :class:`mmpretrain.models.BEiTViT` plus a Compact Side Network
    built from ``csn``, tapped and added back as in :class:`DTLViT`; each
    block still receives its relative position bias. The parent's defaults
    are kept (``out_type='avg_featmap'``: mean of the patch tokens through
    ``ln2``, the DTL classification recipe).

    Args:
        csn (dict): Config of the side network; ``embed_dims`` and
            ``num_layers`` are filled in from the backbone.
        **kwargs: The DTL options of :class:`mmdtl.models.dtl.DTLOptions`
            and the other arguments of :class:`BEiTViT`.
    """
    trunk_adapter = BEiTAdapter
