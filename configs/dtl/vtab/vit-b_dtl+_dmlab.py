# VTAB-1k dmlab (structured), DTL+ on ViT-B/16: the released recipe
# (train_scripts/vit/vtab/dmlab/train_dtl+.sh): lr 5e-3, drop path 0.2, 3x3 DWConv.
_base_ = '../vit-b_vtab-cifar.py'

task = 'dmlab'
model = dict(
    backbone=dict(drop_path_rate=0.2, csn=dict(dwconv_kernel=3)),
    head=dict(num_classes=6))
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
optim_wrapper = dict(optimizer=dict(lr=5e-3))
