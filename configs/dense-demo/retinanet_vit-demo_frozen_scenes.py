# Dense demo, detection (RetinaNet + simple pyramid): Frozen trunk: only the neck and the head
# train.
_base_ = ['./_base_/retinanet_vit-demo_scenes.py']

# chosen on train -> val by tools/misc/dense_demo.py --sweep --write
# (val bbox mAP of the grid, seed 0: 0.001: 9.3, 0.003: 13.4, 0.01: 4.1)
lr = 0.003
model = dict(backbone=dict(_delete_=True, **_base_.backbones.frozen))
optim_wrapper = dict(optimizer=dict(lr=lr))
