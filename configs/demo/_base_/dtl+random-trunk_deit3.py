# DTL+ on a random DeiT3 trunk (mmpretrain's DeiT3: layer-scaled blocks) of
# the demo ViT's size: shows that the trunk trains through mmdtl's runner (no
# pre-trained DeiT3 can be had here; compare with the ViT random-trunk
# control, dtl+random-trunk.py). Features: the mean of the patch tokens after
# the final norm (DeiT3 has no pooled-token norm; its cls token on a random
# trunk with layer scale barely depends on the image). Side network as the
# demo's DTL+.
_base_ = ['./mini-vtab_vit-demo.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='DTLDeiT3',
        arch=dict(embed_dims=96, num_layers=6, num_heads=3, feedforward_channels=384),
        img_size=28,
        patch_size=7,
        in_channels=1,
        out_type='featmap',
        final_norm=True,
        drop_path_rate=0.,
        allow_random_trunk=True,
        csn=dict(type='CompactSideNetwork', rank=2, taps=list(range(6)), start=3, beta=100.,
                 dwconv_kernel=3)),
    neck=dict(_delete_=True, type='GlobalAveragePooling'))
