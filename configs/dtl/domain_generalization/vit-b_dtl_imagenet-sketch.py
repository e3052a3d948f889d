# Plain DTL (no DWConv) on ViT-B/16, domain generalization: trained on ImageNet
# 16-shot, tested on ImageNet-Sketch with the DTL+ sibling's lr, as the release
# (train_scripts/vit/domain_generalization/imagenet-sketch/train_dtl.sh).
_base_ = './vit-b_dtl+_imagenet-sketch.py'

model = dict(backbone=dict(csn=dict(dwconv_kernel=0)))
