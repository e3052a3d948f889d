# Dense demo, detection (RetinaNet + simple pyramid): Full fine-tuning: every trunk parameter
# trains.
_base_ = ['./_base_/retinanet_vit-demo_scenes.py']

# chosen on train -> val by tools/misc/dense_demo.py --sweep --write
# (val bbox mAP of the grid, seed 0: 0.001: 12.5, 0.003: 15.7, 0.01: 9.5)
lr = 0.003
model = dict(backbone=dict(_delete_=True, **_base_.backbones.full))
# The pre-trained trunk takes a tenth of the lr of the neck and head, which
# start from scratch (as mmdet/mmseg fine-tune backbones).
optim_wrapper = dict(
    optimizer=dict(lr=lr), paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=0.1)}))
