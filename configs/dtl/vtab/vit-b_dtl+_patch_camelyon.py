# VTAB-1k patch_camelyon (specialized), DTL+ on ViT-B/16: the released recipe
# (train_scripts/vit/vtab/patch_camelyon/train_dtl+.sh): lr 3e-3, drop path 0.0, 4x4 DWConv.
_base_ = '../vit-b_vtab-cifar.py'

task = 'patch_camelyon'
model = dict(
    backbone=dict(drop_path_rate=0.0, csn=dict(dwconv_kernel=4)),
    head=dict(num_classes=2))
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
optim_wrapper = dict(optimizer=dict(lr=3e-3))
