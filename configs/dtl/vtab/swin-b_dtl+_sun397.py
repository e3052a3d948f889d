# VTAB-1k sun397 (natural), DTL+ on Swin-B: the released recipe
# (train_scripts/swin/vtab/sun397/train_dtl+.sh): lr 3e-3, drop path 0.1, 5x5 DWConv.
_base_ = '../swin-b_vtab-cifar.py'

task = 'sun397'
model = dict(
    backbone=dict(drop_path_rate=0.1, csn=dict(dwconv_kernel=5)),
    head=dict(num_classes=397))
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
optim_wrapper = dict(optimizer=dict(lr=3e-3))
