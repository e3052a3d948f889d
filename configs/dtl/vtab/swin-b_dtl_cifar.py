# VTAB-1k cifar (natural), DTL on Swin-B: the released recipe
# (train_scripts/swin/vtab/cifar_100/train_dtl.sh): lr 1e-3, drop path 0.1, no DWConv.
_base_ = '../swin-b_vtab-cifar_dtl.py'

task = 'cifar'
model = dict(
    backbone=dict(drop_path_rate=0.1, csn=dict(dwconv_kernel=0)),
    head=dict(num_classes=100))
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
optim_wrapper = dict(optimizer=dict(lr=1e-3))
