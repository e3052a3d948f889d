# Plain DTL (no DWConv) on ViT-B/16 for VTAB-1k CIFAR-100.
_base_ = './vit-b_vtab-cifar.py'

model = dict(backbone=dict(csn=dict(dwconv_kernel=0)))
optim_wrapper = dict(optimizer=dict(lr=3e-4))  # the release's cifar_100 train_dtl.sh
