# Dense demo, detection (RetinaNet + simple pyramid): DTL+: DTL with a 3x3 DWConv over the 16x16
# token grid.
_base_ = ['./_base_/retinanet_vit-demo_scenes.py']

# chosen on train -> val by tools/misc/dense_demo.py --sweep --write
# (val bbox mAP of the grid, seed 0: 0.001: 10.7, 0.003: 13.6, 0.01: 8.5)
lr = 0.003
model = dict(backbone=dict(_delete_=True, **_base_.backbones.dtl_plus))
optim_wrapper = dict(optimizer=dict(lr=lr))
