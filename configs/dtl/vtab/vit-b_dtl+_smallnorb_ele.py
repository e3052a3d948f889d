# VTAB-1k smallnorb_ele (structured), DTL+ on ViT-B/16: the released recipe
# (train_scripts/vit/vtab/smallnorb_ele/train_dtl+.sh): lr 1e-3, drop path 0.1, 5x5 DWConv.
_base_ = '../vit-b_vtab-cifar.py'

task = 'smallnorb_ele'
model = dict(
    backbone=dict(drop_path_rate=0.1, csn=dict(dwconv_kernel=5)),
    head=dict(num_classes=9))
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
optim_wrapper = dict(optimizer=dict(lr=1e-3))
