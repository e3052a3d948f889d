# VTAB-1k dmlab (structured), DTL on Swin-B: the released recipe
# (train_scripts/swin/vtab/dmlab/train_dtl.sh): lr 3e-3, drop path 0.3, no DWConv.
_base_ = '../swin-b_vtab-cifar_dtl.py'

task = 'dmlab'
model = dict(
    backbone=dict(drop_path_rate=0.3, csn=dict(dwconv_kernel=0)),
    head=dict(num_classes=6))
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
optim_wrapper = dict(optimizer=dict(lr=3e-3))
