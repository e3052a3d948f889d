# VTAB-1k patch_camelyon (specialized), DTL on Swin-B: the released recipe
# (train_scripts/swin/vtab/patch_camelyon/train_dtl.sh): lr 3e-3, drop path 0.0, no DWConv.
_base_ = '../swin-b_vtab-cifar_dtl.py'

task = 'patch_camelyon'
model = dict(
    backbone=dict(drop_path_rate=0.0, csn=dict(dwconv_kernel=0)),
    head=dict(num_classes=2))
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
optim_wrapper = dict(optimizer=dict(lr=3e-3))
