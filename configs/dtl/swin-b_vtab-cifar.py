# DTL+ (5x5 DWConv) on Swin-B for VTAB-1k CIFAR-100: the released cifar_100
# recipe (train_scripts/swin/vtab/cifar_100/train_dtl+.sh): rank 4, beta 100,
# taps 4-23, add back after 14-23, lr 3e-3, wd 0.05, batch 32, drop path 0;
# timm's cosine schedule with 10 warm-up epochs, 110 epochs. Images as for ViT:
# 224x224 bicubic, mean = std = 0.5.
_base_ = [
    '../_base_/models/dtl_swin-b.py',
    '../_base_/datasets/vtab1k.py',
    '../_base_/schedules/vtab1k_110e.py',
    '../_base_/default_runtime.py',
]

task = 'cifar'
model = dict(head=dict(num_classes=100))
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))

optim_wrapper = dict(optimizer=dict(lr=3e-3))
