# DTL+ on a random BEiT trunk (mmpretrain's BEiTViT: every block takes its
# relative position bias) of the demo ViT's size: shows that the trunk trains
# through mmdtl's runner (no pre-trained BEiT can be had here; compare with
# the ViT random-trunk control, dtl+random-trunk.py). Mean of the patch
# tokens through ln2, as the DTL recipe; side network as the demo's DTL+.
_base_ = ['./mini-vtab_vit-demo.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='DTLBEiT',
        arch=dict(embed_dims=96, num_layers=6, num_heads=3, feedforward_channels=384),
        img_size=28,
        patch_size=7,
        in_channels=1,
        drop_path_rate=0.,
        allow_random_trunk=True,
        csn=dict(type='CompactSideNetwork', rank=2, taps=list(range(6)), start=3, beta=100.,
                 dwconv_kernel=3)))
