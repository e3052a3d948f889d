# VTAB-1k svhn (natural), DTL on Swin-B: the released recipe
# (train_scripts/swin/vtab/svhn/train_dtl.sh): lr 3e-3, drop path 0.4, no DWConv.
_base_ = '../swin-b_vtab-cifar_dtl.py'

task = 'svhn'
model = dict(
    backbone=dict(drop_path_rate=0.4, csn=dict(dwconv_kernel=0)),
    head=dict(num_classes=10))
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
optim_wrapper = dict(optimizer=dict(lr=3e-3))
