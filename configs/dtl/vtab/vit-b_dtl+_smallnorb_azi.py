# VTAB-1k smallnorb_azi (structured), DTL+ on ViT-B/16: the released recipe
# (train_scripts/vit/vtab/smallnorb_azi/train_dtl+.sh): lr 3e-3, drop path 0.2, 5x5 DWConv.
_base_ = '../vit-b_vtab-cifar.py'

task = 'smallnorb_azi'
model = dict(
    backbone=dict(drop_path_rate=0.2, csn=dict(dwconv_kernel=5)),
    head=dict(num_classes=18))
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
optim_wrapper = dict(optimizer=dict(lr=3e-3))
