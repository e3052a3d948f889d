# Released VTAB-1k schedule: AdamW, no decay on biases, 10 warm-up epochs
# from 1e-7 then cosine to 1e-8, 100 epochs, the learning rate updated once per
# epoch as timm's scheduler does. (timm's cosine counts the warm-up epochs, so
# epoch 10 starts at 0.98 x lr rather than lr, and the release then runs 10
# more epochs at 1e-8; both are left out here.) AmpOptimWrapper is used on
# GPU; tools/train.py falls back to fp32 on a machine without CUDA.
base_lr = 5e-4

optim_wrapper = dict(
    type='AmpOptimWrapper',
    optimizer=dict(type='AdamW', lr=base_lr, weight_decay=0.05),
    paramwise_cfg=dict(bias_decay_mult=0.),
)

param_scheduler = [
    dict(type='LinearLR', start_factor=1e-7 / base_lr, by_epoch=True, begin=0, end=10),
    dict(type='CosineAnnealingLR', eta_min=1e-8, by_epoch=True, begin=10, end=100),
]

train_cfg = dict(by_epoch=True, max_epochs=100, val_interval=100)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=32)
