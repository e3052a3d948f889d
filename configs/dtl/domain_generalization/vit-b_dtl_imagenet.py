# Plain DTL (no DWConv) on ViT-B/16, domain generalization
# (train_scripts/vit/domain_generalization/imagenet/train_dtl.sh): lr 1e-4.
_base_ = './vit-b_dtl+_imagenet.py'

model = dict(backbone=dict(csn=dict(dwconv_kernel=0)))
