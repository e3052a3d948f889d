# Dense demo, segmentation (FCN head): DTL+: DTL with a 3x3 DWConv over the 16x16 token grid.
_base_ = ['./_base_/fcn_vit-demo_scenes.py']

# chosen on train -> val by tools/misc/dense_demo.py --sweep --write
lr = 0.001
model = dict(backbone=dict(_delete_=True, **_base_.backbones.dtl_plus))
optim_wrapper = dict(optimizer=dict(lr=lr))
