# Released few-shot FGVC / domain-generalization schedule: as for VTAB-1k
# (AdamW, wd 0.05, no decay on biases, 10 warm-up epochs, cosine to 1e-8,
# 100 epochs, batch 32); validation every 10 epochs. The learning rate is set
# per config: `lr_per_shot` (applied by FewShotRunner while lr is None) or lr.
optim_wrapper = dict(
    type='AmpOptimWrapper',
    optimizer=dict(type='AdamW', lr=None, weight_decay=0.05),
    paramwise_cfg=dict(bias_decay_mult=0.),
)

param_scheduler = [
    # Stepped per epoch like timm's scheduler; see vtab1k_100e.py.
    dict(type='LinearLR', start_factor=2e-4, by_epoch=True, begin=0, end=10),
    dict(type='CosineAnnealingLR', eta_min=1e-8, by_epoch=True, begin=10, end=100),
]

train_cfg = dict(by_epoch=True, max_epochs=100, val_interval=10)
val_cfg = dict()
test_cfg = dict()
auto_scale_lr = dict(base_batch_size=32)
