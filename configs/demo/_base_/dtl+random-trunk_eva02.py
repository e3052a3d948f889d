# DTL+ on a random EVA-02 trunk (mmpretrain's ViTEVA02: every block takes the
# patch grid for its rotary embedding) of the demo ViT's size: shows that it trains
# through mmdtl's runner (no pre-trained EVA-02 can be had here; compare with
# the ViT random-trunk control, dtl+random-trunk.py). Mean of the patch
# tokens through ln2, as the DTL recipe; side network as the demo's DTL+.
_base_ = ['./mini-vtab_vit-demo.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='DTLViTEVA02',
        arch=dict(embed_dims=96, num_layers=6, num_heads=3, feedforward_channels=384),
        img_size=28,
        patch_size=7,
        in_channels=1,
        out_type='avg_featmap',
        final_norm=False,
        drop_path_rate=0.,
        allow_random_trunk=True,
        csn=dict(type='CompactSideNetwork', rank=2, taps=list(range(6)), start=3, beta=100.,
                 dwconv_kernel=3)))
