# VTAB-1k dsprites_loc (structured), DTL+ on ViT-B/16: the released recipe
# (train_scripts/vit/vtab/dsprites_loc/train_dtl+.sh): lr 8e-3, drop path 0.1, 4x4 DWConv.
_base_ = '../vit-b_vtab-cifar.py'

task = 'dsprites_loc'
model = dict(
    backbone=dict(drop_path_rate=0.1, csn=dict(dwconv_kernel=4)),
    head=dict(num_classes=16))
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
optim_wrapper = dict(optimizer=dict(lr=8e-3))
