# DTL+ (3x3 DWConv) on ViT-B/16, domain generalization:
# trained on ImageNet 16-shot, tested on ImageNet-V2
# (train_scripts/vit/domain_generalization/imagenetv2/train_dtl+.sh): lr 1e-4.
_base_ = './vit-b_dtl+_imagenet.py'

test_dataloader = dict(dataset=dict(name='imagenetv2'))
optim_wrapper = dict(optimizer=dict(lr=1e-4))
