# DTL: the frozen trunk plus a Compact Side Network, as the released ViT
# recipe scaled to 6 blocks: rank 2, every block tapped, added back after
# blocks 3..5 (M = half the depth, as 6 of 12 for ViT-B), no DWConv.
_base_ = ['./mini-vtab_vit-demo.py']

model = dict(
    backbone=dict(
        type='DTLViT',
        csn=dict(type='CompactSideNetwork', rank=2, taps=list(range(6)), start=3, beta=100.,
                 dwconv_kernel=0)))
