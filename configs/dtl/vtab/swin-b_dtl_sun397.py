# VTAB-1k sun397 (natural), DTL on Swin-B: the released recipe
# (train_scripts/swin/vtab/sun397/train_dtl.sh): lr 8e-4, drop path 0.2, no DWConv.
_base_ = '../swin-b_vtab-cifar_dtl.py'

task = 'sun397'
model = dict(
    backbone=dict(drop_path_rate=0.2, csn=dict(dwconv_kernel=0)),
    head=dict(num_classes=397))
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
optim_wrapper = dict(optimizer=dict(lr=8e-4))
