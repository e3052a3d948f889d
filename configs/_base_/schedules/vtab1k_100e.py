# Released VTAB-1k schedule: AdamW, no decay on biases, 10 warm-up epochs
# then cosine to 1e-8, 100 epochs. AmpOptimWrapper is used on GPU;
# tools/train.py falls back to fp32 on a machine without CUDA.
optim_wrapper = dict(
    type='AmpOptimWrapper',
    optimizer=dict(type='AdamW', lr=5e-4, weight_decay=0.05),
    paramwise_cfg=dict(bias_decay_mult=0.),
)

param_scheduler = [
    dict(type='LinearLR', start_factor=2e-4, by_epoch=True, begin=0, end=10,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-8, by_epoch=True, begin=10, end=100),
]

train_cfg = dict(by_epoch=True, max_epochs=100, val_interval=100)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=32)
