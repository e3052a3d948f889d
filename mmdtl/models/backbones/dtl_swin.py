"""DTL on mmpretrain's SwinTransformer."""
from typing import List

from mmpretrain.models.backbones import SwinTransformer
from mmpretrain.models.backbones.swin_transformer import SwinBlock
from mmpretrain.models.utils import resize_pos_embed
from mmpretrain.registry import MODELS

from ..dtl import DTLBackbone, TrunkAdapter


class SwinAdapter(TrunkAdapter):
    """mmpretrain's ``SwinTransformer``: blocks numbered globally across
    stages, called as ``block(x, hw_shape)``; after a stage's last block its
    output (``norm{i}``) and patch merging, in the parent's order
    (``out_after_downsample``)."""

    def blocks(self):
        return [block for stage in self.backbone.stages for block in stage.blocks]

    def block_stages(self) -> List[int]:
        return [i for i, stage in enumerate(self.backbone.stages) for _ in stage.blocks]

    def block_dims(self) -> List[int]:
        return [stage.embed_dims for stage in self.backbone.stages for _ in stage.blocks]

    def embedding_modules(self):
        return [self.backbone.patch_embed]

    def embedding_parameters(self):
        bb = self.backbone
        return [bb.absolute_pos_embed] if bb.use_abs_pos_embed else []

    def transition_modules(self, index: int):
        stage = self.stage_ending_at(index)
        if stage is None or self.backbone.stages[stage].downsample is None:
            return []
        return [self.backbone.stages[stage].downsample]

    def embed(self, images):
        bb = self.backbone
        x, hw_shape = bb.patch_embed(images)
        if bb.use_abs_pos_embed:
            x = x + resize_pos_embed(bb.absolute_pos_embed, bb.patch_resolution, hw_shape,
                                     bb.interpolate_mode, bb.num_extra_tokens)
        return bb.drop_after_pos(x), tuple(hw_shape)

    def call_block(self, index, block, x, grid):
        # The output is on the unpadded grid: window padding is undone inside.
        return block(x, grid)

    def block_sublayers(self, index, block, grid):
        # SwinBlock's own forward (its with_cp only checkpoints the same ops),
        # split where it adds its first residual.
        if type(block).forward is not SwinBlock.forward:
            return None
        return [lambda x: block.attn(block.norm1(x), grid) + x,
                lambda x: block.ffn(block.norm2(x), identity=x)]

    def after_block(self, index, x, grid):
        bb, s = self.backbone, self.stage_ending_at(index)
        if s is None:
            return x, grid, []
        downsample, outs = bb.stages[s].downsample, []
        if downsample is not None and bb.out_after_downsample:
            x, grid = downsample(x, grid)
        if s in bb.out_indices:
            out = getattr(bb, f'norm{s}')(x)
            outs.append(out.view(-1, *grid, bb.num_features[s]).permute(0, 3, 1, 2)
                        .contiguous())
        if downsample is not None and not bb.out_after_downsample:
            x, grid = downsample(x, grid)
        return x, tuple(grid), outs


@MODELS.register_module()
class DTLSwin(DTLBackbone, SwinTransformer):
    """Swin Transformer fine-tuned with Disentangled Transfer Learning.

    A frozen :class:`mmpretrain.models.SwinTransformer` (any arch of its zoo,
    any input size) plus a Compact Side Network built from ``csn``. Blocks
    are numbered globally across stages (Swin-B: 0-23). Before block ``i``
    the CSN reads the block's input; after every block ``i >= csn.start``
    (``M``) its output is added to the token stream, before the stage's
    patch merging, as in the released code. The running sum restarts at
    every stage and each stage that adds back has its own depthwise conv,
    applied on the stage's real token grid. Until block ``M`` the trunk
    never sees task-specific input, so when it is frozen it runs under
    ``torch.no_grad()`` and keeps no activations for backward.

    ``out_indices``, the per-stage norms ``norm{i}``,
    ``out_after_downsample``, ``pad_small_map`` and the other arguments of
    the parent keep working, for classification (with a
    ``GlobalAveragePooling`` neck) and for dense prediction.

    Args:
        csn (dict): Config of the side network, e.g.
            ``dict(type='CompactSideNetwork', rank=4,
            taps=list(range(4, 24)), start=14, dwconv_kernel=5)``;
            ``embed_dims``, ``num_layers`` and ``stages`` are filled in from
            the backbone.
        **kwargs: The DTL options of :class:`mmdtl.models.dtl.DTLOptions`
            and the other arguments of :class:`SwinTransformer`.
    """
    trunk_adapter = SwinAdapter

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        """Rename old (mmcls < v2) keys as the parent does; the parent skips
        this for subclasses."""
        version = local_metadata.get('version', None)
        if version is None or version < 2:
            final_norm = f'norm{len(self.stages) - 1}.'
            for key in [k for k in state_dict if k.startswith(prefix + 'norm.')]:
                new_key = prefix + final_norm + key[len(prefix + 'norm.'):]
                state_dict[new_key] = state_dict.pop(key)
        if version is None or version < 3:
            for key in [k for k in state_dict if k.startswith(prefix) and 'attn_mask' in k]:
                del state_dict[key]
        # Skip SwinTransformer's renaming (done above) and load as nn.Module.
        super(SwinTransformer, self)._load_from_state_dict(
            state_dict, prefix, local_metadata, *args, **kwargs)
