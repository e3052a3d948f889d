# DTL+ (3x3 DWConv) on ViT-B/16 for VTAB-1k CIFAR-100: the released
# cifar_100 recipe (rank 2, beta 100, taps 0-11, add back after 6-11,
# lr 5e-4, wd 0.05, batch 32, drop path 0.1; timm's cosine schedule, 110 epochs).
_base_ = [
    '../_base_/models/dtl_vit-b16.py',
    '../_base_/datasets/vtab1k.py',
    '../_base_/schedules/vtab1k_110e.py',
    '../_base_/default_runtime.py',
]

task = 'cifar'
model = dict(head=dict(num_classes=100))
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
