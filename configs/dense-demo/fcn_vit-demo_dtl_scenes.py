# Dense demo, segmentation (FCN head): DTL: frozen trunk + Compact Side Network (rank 2, all taps,
# add back after blocks 3-5).
_base_ = ['./_base_/fcn_vit-demo_scenes.py']

# chosen on train -> val by tools/misc/dense_demo.py --sweep --write
lr = 0.001
model = dict(backbone=dict(_delete_=True, **_base_.backbones.dtl))
optim_wrapper = dict(optimizer=dict(lr=lr))
