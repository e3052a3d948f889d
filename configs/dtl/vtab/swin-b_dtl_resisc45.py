# VTAB-1k resisc45 (specialized), DTL on Swin-B: the released recipe
# (train_scripts/swin/vtab/resisc45/train_dtl.sh): lr 5e-3, drop path 0.5, no DWConv.
_base_ = '../swin-b_vtab-cifar_dtl.py'

task = 'resisc45'
model = dict(
    backbone=dict(drop_path_rate=0.5, csn=dict(dwconv_kernel=0)),
    head=dict(num_classes=45))
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
optim_wrapper = dict(optimizer=dict(lr=5e-3))
