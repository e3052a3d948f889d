# VTAB-1k dsprites_loc (structured), DTL on Swin-B: the released recipe
# (train_scripts/swin/vtab/dsprites_loc/train_dtl.sh): lr 8e-3, drop path 0.4, no DWConv.
_base_ = '../swin-b_vtab-cifar_dtl.py'

task = 'dsprites_loc'
model = dict(
    backbone=dict(drop_path_rate=0.4, csn=dict(dwconv_kernel=0)),
    head=dict(num_classes=16))
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
optim_wrapper = dict(optimizer=dict(lr=8e-3))
