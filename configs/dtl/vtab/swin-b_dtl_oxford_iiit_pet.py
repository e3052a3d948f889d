# VTAB-1k oxford_iiit_pet (natural), DTL on Swin-B: the released recipe
# (train_scripts/swin/vtab/pets/train_dtl.sh): lr 3e-4, drop path 0.1, no DWConv.
_base_ = '../swin-b_vtab-cifar_dtl.py'

task = 'oxford_iiit_pet'
model = dict(
    backbone=dict(drop_path_rate=0.1, csn=dict(dwconv_kernel=0)),
    head=dict(num_classes=37))
train_dataloader = dict(dataset=dict(task=task))
val_dataloader = dict(dataset=dict(task=task))
test_dataloader = dict(dataset=dict(task=task))
optim_wrapper = dict(optimizer=dict(lr=3e-4))
