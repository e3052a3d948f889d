# Plain DTL (no DWConv) on ViT-B/16, domain generalization: trained on ImageNet
# 16-shot, tested on ImageNet val with the DTL+ sibling's lr, as the release
# (train_scripts/vit/domain_generalization/imagenet/train_dtl.sh).
_base_ = './vit-b_dtl+_imagenet.py'

model = dict(backbone=dict(csn=dict(dwconv_kernel=0)))
