# VTAB-1k eurosat (specialized), DTL+ on Swin-B: the released recipe
# (train_scripts/swin/vtab/eurosat/train_dtl+.sh): lr 1e-3, drop path 0.3, 5x5 DWConv.
_base_ = '../swin-b_vtab-cifar.py'

task = 'eurosat'
model = dict(
    backbone=dict(drop_path_rate=0.3, csn=dict(dwconv_kernel=5)),
    head=dict(num_classes=10))
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
optim_wrapper = dict(optimizer=dict(lr=1e-3))
