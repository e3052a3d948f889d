# VTAB-1k dtd (natural), DTL on ViT-B/16: the released recipe
# (train_scripts/vit/vtab/dtd/train_dtl.sh): lr 3e-4, drop path 0.1, no DWConv.
_base_ = '../vit-b_vtab-cifar_dtl.py'

task = 'dtd'
model = dict(
    backbone=dict(drop_path_rate=0.1, csn=dict(dwconv_kernel=0)),
    head=dict(num_classes=47))
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
optim_wrapper = dict(optimizer=dict(lr=3e-4))
