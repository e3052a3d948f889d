# VTAB-1k cifar (natural), DTL+ on ViT-B/16: the released recipe
# (train_scripts/vit/vtab/cifar_100/train_dtl+.sh): lr 5e-4, drop path 0.1, 3x3 DWConv.
_base_ = '../vit-b_vtab-cifar.py'

task = 'cifar'
model = dict(
    backbone=dict(drop_path_rate=0.1, csn=dict(dwconv_kernel=3)),
    head=dict(num_classes=100))
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
optim_wrapper = dict(optimizer=dict(lr=5e-4))
