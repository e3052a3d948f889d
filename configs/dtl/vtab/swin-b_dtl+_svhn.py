# VTAB-1k svhn (natural), DTL+ on Swin-B: the released recipe
# (train_scripts/swin/vtab/svhn/train_dtl+.sh): lr 5e-3, drop path 0.5, 5x5 DWConv.
_base_ = '../swin-b_vtab-cifar.py'

task = 'svhn'
model = dict(
    backbone=dict(drop_path_rate=0.5, csn=dict(dwconv_kernel=5)),
    head=dict(num_classes=10))
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
optim_wrapper = dict(optimizer=dict(lr=5e-3))
