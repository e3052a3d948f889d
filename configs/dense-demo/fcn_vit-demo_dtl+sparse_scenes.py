# Dense demo, segmentation (FCN head): Sparse DTL+: taps at blocks 1, 3, 5, add back after blocks
# 3 and 5 only.
_base_ = ['./_base_/fcn_vit-demo_scenes.py']

# chosen on train -> val by tools/misc/dense_demo.py --sweep --write
# (val mIoU of the grid, seed 0: 0.003: 8.2, 0.01: 24.2, 0.03: 30.5)
lr = 0.03
model = dict(backbone=dict(_delete_=True, **_base_.backbones.dtl_plus_sparse))
optim_wrapper = dict(optimizer=dict(lr=lr))
