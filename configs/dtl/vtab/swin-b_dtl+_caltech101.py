# VTAB-1k caltech101 (natural), DTL+ on Swin-B: the released recipe
# (train_scripts/swin/vtab/caltech101/train_dtl+.sh): lr 5e-4, drop path 0.4, 5x5 DWConv.
_base_ = '../swin-b_vtab-cifar.py'

task = 'caltech101'
model = dict(
    backbone=dict(drop_path_rate=0.4, csn=dict(dwconv_kernel=5)),
    head=dict(num_classes=102))
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
optim_wrapper = dict(optimizer=dict(lr=5e-4))
