# VTAB-1k sun397 (natural), DTL on ViT-B/16: the released recipe
# (train_scripts/vit/vtab/sun397/train_dtl.sh): lr 5e-4, drop path 0.1, no DWConv.
_base_ = '../vit-b_vtab-cifar_dtl.py'

task = 'sun397'
model = dict(
    backbone=dict(drop_path_rate=0.1, csn=dict(dwconv_kernel=0)),
    head=dict(num_classes=397))
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
optim_wrapper = dict(optimizer=dict(lr=5e-4))
