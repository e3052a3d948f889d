# Dense demo, segmentation (FCN head): DTL: frozen trunk + Compact Side Network (rank 2, all taps,
# add back after blocks 3-5).
_base_ = ['./_base_/fcn_vit-demo_scenes.py']

# chosen on train -> val by tools/misc/dense_demo.py --sweep --write
# (val mIoU of the grid, seed 0: 0.003: 5.2, 0.01: 21.8, 0.03: 30.3)
lr = 0.03
model = dict(backbone=dict(_delete_=True, **_base_.backbones.dtl))
optim_wrapper = dict(optimizer=dict(lr=lr))
