# DTL+ on a random ConvNeXt trunk (mmpretrain's ConvNeXt, three stages of
# 2/2/4 blocks and 32/64/96 channels; stem patch 2 on the 28x28 images: 14,
# 7 and 3 px grids): shows that a convolutional trunk trains through mmdtl's
# runner (no pre-trained ConvNeXt can be had here; compare with the ViT
# random-trunk control, dtl+random-trunk.py). The side network follows the
# Swin recipe: rank 4, taps in the last stage, added back from its second
# block (M = 5) with a 3x3 DWConv on the 3x3 map; pooled, normed features.
_base_ = ['./mini-vtab_vit-demo.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='DTLConvNeXt',
        arch=dict(depths=[2, 2, 4], channels=[32, 64, 96]),
        in_channels=1,
        stem_patch_size=2,
        out_indices=(2, ),
        drop_path_rate=0.,
        allow_random_trunk=True,
        csn=dict(type='CompactSideNetwork', rank=4, taps=[4, 5, 6, 7], start=5, beta=100.,
                 dwconv_kernel=3)))
