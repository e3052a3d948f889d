# The backbones of the dense demo, one per method, all from the shipped
# pre-trained demo ViT (checkpoints/demo/: 6 blocks of 96 dims, patch 7, grey
# 28x28 Fashion-MNIST train images). On the 112x112 scenes it sees a 16x16
# patch grid (its 4x4 position embedding is resized bicubically) and gives the
# last block's tokens as a (B, 96, 16, 16) map at stride 7. Types carry their
# registry, so the same dicts serve mmdet and mmseg configs.
pretrained = 'checkpoints/demo/vit-demo_fashion-mnist.pth'
vit_demo = dict(
    arch=dict(embed_dims=96, num_layers=6, num_heads=3, feedforward_channels=384),
    img_size=28,
    patch_size=7,
    in_channels=1,
    out_type='featmap',
    final_norm=False,  # the checkpoint has no final LayerNorm before the patch tokens
    drop_path_rate=0.,
    init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.'))
# The side network of the classification demo (configs/demo/_base_/dtl.py):
# rank 2, every block tapped, added back after blocks 3..5 (M = half the depth).
csn_demo = dict(type='mmpretrain.CompactSideNetwork', rank=2, taps=list(range(6)), start=3,
            beta=100., dwconv_kernel=0)

backbones = dict(
    # Full fine-tuning: every trunk parameter trains.
    full=dict(type='mmpretrain.VisionTransformer', **vit_demo),
    # Frozen trunk: blocks and embeddings frozen; only the neck and heads train.
    frozen=dict(type='mmpretrain.VisionTransformer', frozen_stages=6, **vit_demo),
    dtl=dict(type='mmpretrain.DTLViT', csn=csn_demo, **vit_demo),
    # DTL+: 3x3 depthwise conv over the 16x16 token grid.
    dtl_plus=dict(type='mmpretrain.DTLViT', csn=dict(csn_demo, dwconv_kernel=3), **vit_demo),
    # Sparse DTL+ (the journal version's sparser side network for dense
    # tasks): every second block taps, and only blocks 3 and 5 add back.
    dtl_plus_sparse=dict(
        type='mmpretrain.DTLViT',
        csn=dict(csn_demo, dwconv_kernel=3, taps=[1, 3, 5], start=None, add_back_blocks=[3, 5]),
        **vit_demo),
)
