# Released few-shot FGVC / domain-generalization schedule
# (train_vit_few_shot.py / train_vit_domain_genralization.py): the VTAB-1k
# schedule of vtab1k_110e.py (AdamW, wd 0.05 except biases, batch 32, timm's
# cosine with 10 warm-up epochs from 1e-7, 110 epochs), with validation every
# 10 epochs (10, 20, ..., 110) where a config has a validation set. The
# learning rate is set per config: `lr_per_shot` (applied by FewShotRunner
# while lr is None) or lr.
optim_wrapper = dict(
    type='AmpOptimWrapper',
    optimizer=dict(type='AdamW', lr=None, weight_decay=0.05),
    paramwise_cfg=dict(bias_decay_mult=0.),
)

param_scheduler = [
    dict(type='TimmCosineLR', t_initial=100, warmup_t=10, warmup_lr_init=1e-7, lr_min=1e-8,
         by_epoch=True),
]

train_cfg = dict(by_epoch=True, max_epochs=110, val_interval=10)
val_cfg = dict(fp16=True)
test_cfg = dict(fp16=True)
global_batch_size = 32  # kept on any number of GPUs: per GPU 32 / N (tools/train.py)
auto_scale_lr = dict(base_batch_size=32)
