"""DTL on mmpretrain's VisionTransformer."""
from mmpretrain.models.backbones import VisionTransformer
from mmpretrain.models.backbones.vision_transformer import TransformerEncoderLayer
from mmpretrain.models.utils import resize_pos_embed
from mmpretrain.registry import MODELS

from ..dtl import DTLBackbone, ViTFamilyAdapter


class ViTAdapter(ViTFamilyAdapter):
    """mmpretrain's ``VisionTransformer``: cls token, position embedding
    (any grid), ``pre_norm``, blocks called as ``layer(x)``."""

    def embed(self, images):
        """An input whose size is not a multiple of the patch size is padded
        at the bottom/right by the parent's ``PatchEmbed``
        (``padding='corner'``), so the grid, and the DWConv, cover the padded
        image."""
        bb = self.backbone
        x, grid = bb.patch_embed(images)
        if bb.cls_token is not None:
            x = self.prepend_cls_token(x)
        x = x + resize_pos_embed(bb.pos_embed, bb.patch_resolution, grid,
                                 mode=bb.interpolate_mode, num_extra_tokens=bb.num_extra_tokens)
        return bb.pre_norm(bb.drop_after_pos(x)), grid

    def block_sublayers(self, index, block, grid):
        # Only a block that runs mmpretrain's own forward, split as it is:
        # x + attn(ln1(x)), then ffn(ln2(x), identity=x).
        if type(block).forward is not TransformerEncoderLayer.forward:
            return None
        return [lambda x: x + block.attn(block.ln1(x)),
                lambda x: block.ffn(block.ln2(x), identity=x)]


@MODELS.register_module()
class DTLViT(DTLBackbone, VisionTransformer):
    """Vision Transformer fine-tuned with Disentangled Transfer Learning.

    A frozen :class:`mmpretrain.models.VisionTransformer` (any arch of its zoo,
    any image and patch size) plus a Compact Side Network built from ``csn``.
    Before block ``i`` the CSN reads the block's input; after every block
    ``i >= csn.start`` (``M``) its output is added to the token stream.
    Blocks ``0..M`` never see task-specific input, so when they are frozen
    they run under ``torch.no_grad()`` and keep no activations for backward.

    The defaults follow the released classification recipe: the mean of the
    patch tokens goes through the backbone's final LayerNorm
    (``out_type='avg_featmap'``, ``final_norm=False``; a pre-trained ``ln1``
    is loaded into ``ln2``). Every other ``out_type`` and ``out_indices``
    of the parent keep working.

    Args:
        csn (dict): Config of the side network, e.g.
            ``dict(type='CompactSideNetwork', rank=2, start=6,
            dwconv_kernel=3)``; ``embed_dims`` and ``num_layers`` are filled
            in from the backbone.
        out_type (str): See :class:`VisionTransformer`.
            Defaults to ``'avg_featmap'``.
        final_norm (bool): See :class:`VisionTransformer`. Defaults to False.
        **kwargs: The DTL options, the fields of
            :class:`mmdtl.models.dtl.DTLOptions` (``freeze_backbone``,
            ``checkpoint_suffix``, ``checkpoint_sublayers``, ...), and the
            other arguments of :class:`VisionTransformer`.
    """
    trunk_adapter = ViTAdapter

    def __init__(self, *args, out_type: str = 'avg_featmap', final_norm: bool = False,
                 **kwargs):
        super().__init__(*args, out_type=out_type, final_norm=final_norm, **kwargs)

    def register_trunk_hooks(self) -> None:
        self._register_load_state_dict_pre_hook(self._final_norm_into_ln2)

    def _final_norm_into_ln2(self, state_dict, prefix, *args, **kwargs):
        """Pre-trained checkpoints name the final LayerNorm ``ln1``; with
        ``avg_featmap`` and no ``final_norm`` it normalises the pooled
        patch tokens as ``ln2``."""
        if self.final_norm or self.out_type != 'avg_featmap':
            return
        for name in ('weight', 'bias'):
            src, dst = f'{prefix}ln1.{name}', f'{prefix}ln2.{name}'
            if src in state_dict and dst not in state_dict:
                state_dict[dst] = state_dict.pop(src)
