# VTAB-1k clevr_dist (structured), DTL on ViT-B/16: the released recipe
# (train_scripts/vit/vtab/clevr_dist/train_dtl.sh): lr 5e-4, drop path 0.2, no DWConv.
_base_ = '../vit-b_vtab-cifar_dtl.py'

task = 'clevr_dist'
model = dict(
    backbone=dict(drop_path_rate=0.2, csn=dict(dwconv_kernel=0)),
    head=dict(num_classes=6))
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
optim_wrapper = dict(optimizer=dict(lr=5e-4))
