# Plain DTL (no DWConv) on Swin-B for VTAB-1k CIFAR-100
# (train_scripts/swin/vtab/cifar_100/train_dtl.sh): lr 1e-3, drop path 0.1.
_base_ = './swin-b_vtab-cifar.py'

model = dict(backbone=dict(drop_path_rate=0.1, csn=dict(dwconv_kernel=0)))
optim_wrapper = dict(optimizer=dict(lr=1e-3))
