# Dense demo, segmentation (FCN head): DTL+: DTL with a 3x3 DWConv over the 16x16 token grid.
_base_ = ['./_base_/fcn_vit-demo_scenes.py']

# chosen on train -> val by tools/misc/dense_demo.py --sweep --write
# (val mIoU of the grid, seed 0: 0.003: 8.0, 0.01: 26.4, 0.03: 32.8)
lr = 0.03
model = dict(backbone=dict(_delete_=True, **_base_.backbones.dtl_plus))
optim_wrapper = dict(optimizer=dict(lr=lr))
