# VTAB-1k eurosat (specialized), DTL on ViT-B/16: the released recipe
# (train_scripts/vit/vtab/eurosat/train_dtl.sh): lr 8e-3, drop path 0.0, no DWConv.
_base_ = '../vit-b_vtab-cifar_dtl.py'

task = 'eurosat'
model = dict(
    backbone=dict(drop_path_rate=0.0, csn=dict(dwconv_kernel=0)),
    head=dict(num_classes=10))
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
optim_wrapper = dict(optimizer=dict(lr=8e-3))
