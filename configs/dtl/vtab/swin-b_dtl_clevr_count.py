# VTAB-1k clevr_count (structured), DTL on Swin-B: the released recipe
# (train_scripts/swin/vtab/clevr_count/train_dtl.sh): lr 5e-4, drop path 0.4, no DWConv.
_base_ = '../swin-b_vtab-cifar_dtl.py'

task = 'clevr_count'
model = dict(
    backbone=dict(drop_path_rate=0.4, csn=dict(dwconv_kernel=0)),
    head=dict(num_classes=8))
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
optim_wrapper = dict(optimizer=dict(lr=5e-4))
