# DTL+ (3x3 DWConv) on ViT-B/16, domain generalization:
# trained on ImageNet 16-shot, tested on ImageNet-Sketch
# (train_scripts/vit/domain_generalization/imagenet-sketch/train_dtl+.sh): lr 5e-5.
_base_ = './vit-b_dtl+_imagenet.py'

test_dataloader = dict(dataset=dict(name='imagenet-sketch'))
optim_wrapper = dict(optimizer=dict(lr=5e-5))
