# Plain DTL (no DWConv) on ViT-B/16, domain generalization: trained on ImageNet
# 16-shot, tested on ImageNet-V2 with the DTL+ sibling's lr, as the release
# (train_scripts/vit/domain_generalization/imagenetv2/train_dtl.sh).
_base_ = './vit-b_dtl+_imagenet-v2.py'

model = dict(backbone=dict(csn=dict(dwconv_kernel=0)))
