# DTL+ (3x3 DWConv) on ViT-B/16, domain generalization:
# trained on ImageNet 16-shot, tested on ImageNet-A
# (train_scripts/vit/domain_generalization/imagenet-adversarial/train_dtl+.sh): lr 8e-5.
_base_ = './vit-b_dtl+_imagenet.py'

test_dataloader = dict(dataset=dict(name='imagenet-adversarial'))
optim_wrapper = dict(optimizer=dict(lr=8e-5))
