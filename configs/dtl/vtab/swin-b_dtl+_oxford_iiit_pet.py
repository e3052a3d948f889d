# VTAB-1k oxford_iiit_pet (natural), DTL+ on Swin-B: the released recipe
# (train_scripts/swin/vtab/pets/train_dtl+.sh): lr 1e-4, drop path 0.3, 5x5 DWConv.
_base_ = '../swin-b_vtab-cifar.py'

task = 'oxford_iiit_pet'
model = dict(
    backbone=dict(drop_path_rate=0.3, csn=dict(dwconv_kernel=5)),
    head=dict(num_classes=37))
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
optim_wrapper = dict(optimizer=dict(lr=1e-4))
