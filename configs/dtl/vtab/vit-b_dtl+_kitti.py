# VTAB-1k kitti (structured), DTL+ on ViT-B/16: the released recipe
# (train_scripts/vit/vtab/kitti/train_dtl+.sh): lr 8e-3, drop path 0.2, 4x4 DWConv.
_base_ = '../vit-b_vtab-cifar.py'

task = 'kitti'
model = dict(
    backbone=dict(drop_path_rate=0.2, csn=dict(dwconv_kernel=4)),
    head=dict(num_classes=4))
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
optim_wrapper = dict(optimizer=dict(lr=8e-3))
