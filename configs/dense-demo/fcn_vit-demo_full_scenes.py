# Dense demo, segmentation (FCN head): Full fine-tuning: every trunk parameter trains.
_base_ = ['./_base_/fcn_vit-demo_scenes.py']

# chosen on train -> val by tools/misc/dense_demo.py --sweep --write
lr = 0.0001
model = dict(backbone=dict(_delete_=True, **_base_.backbones.full))
optim_wrapper = dict(optimizer=dict(lr=lr))
