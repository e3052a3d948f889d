# VTAB-1k clevr_count (structured), DTL+ on ViT-B/16: the released recipe
# (train_scripts/vit/vtab/clevr_count/train_dtl+.sh): lr 8e-4, drop path 0.2, 5x5 DWConv.
_base_ = '../vit-b_vtab-cifar.py'

task = 'clevr_count'
model = dict(
    backbone=dict(drop_path_rate=0.2, csn=dict(dwconv_kernel=5)),
    head=dict(num_classes=8))
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
optim_wrapper = dict(optimizer=dict(lr=8e-4))
