# Dense demo, detection (RetinaNet + simple pyramid): Frozen trunk: only the neck and the head
# train.
_base_ = ['./_base_/retinanet_vit-demo_scenes.py']

# chosen on train -> val by tools/misc/dense_demo.py --sweep --write
lr = 0.001
model = dict(backbone=dict(_delete_=True, **_base_.backbones.frozen))
optim_wrapper = dict(optimizer=dict(lr=lr))
