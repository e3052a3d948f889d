# DTL+ (3x3 DWConv) on ViT-B/16, domain generalization:
# trained on ImageNet 16-shot, tested on ImageNet-R
# (train_scripts/vit/domain_generalization/imagenet-rendition/train_dtl+.sh): lr 3e-5.
_base_ = './vit-b_dtl+_imagenet.py'

test_dataloader = dict(dataset=dict(name='imagenet-rendition'))
optim_wrapper = dict(optimizer=dict(lr=3e-5))
