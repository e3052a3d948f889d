# Plain DTL (no DWConv) on ViT-B/16, one model tested on all five domain
# generalization targets (see vit-b_dtl+_all-targets.py).
_base_ = './vit-b_dtl+_all-targets.py'

model = dict(backbone=dict(csn=dict(dwconv_kernel=0)))
