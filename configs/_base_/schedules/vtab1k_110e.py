# Released VTAB-1k schedule (train_vit_vtab.py / train_swin_vtab.py with timm
# 0.5.4): AdamW, weight decay 0.05 except on biases, batch 32, timm's
# CosineLRScheduler(t_initial=100, warmup_t=10, warmup_lr_init=1e-7,
# lr_min=1e-8) stepped once per epoch, and get_cycle_length() + 10 = 110
# epochs. Epoch t (0-based) runs at
#   t < 10:        1e-7 + t * (lr - 1e-7) / 10
#   10 <= t < 100: 1e-8 + (lr - 1e-8) * (1 + cos(pi * t / 100)) / 2
#   t >= 100:      1e-8
# with lr the optimizer's (set per config). The last epoch is tested.
# Training and evaluation run under fp16 autocast on GPU as the release's
# --amp; tools/train.py and tools/test.py fall back to fp32 without CUDA.
base_lr = 5e-4

optim_wrapper = dict(
    type='AmpOptimWrapper',
    optimizer=dict(type='AdamW', lr=base_lr, weight_decay=0.05),
    paramwise_cfg=dict(bias_decay_mult=0.),
)

param_scheduler = [
    dict(type='TimmCosineLR', t_initial=100, warmup_t=10, warmup_lr_init=1e-7, lr_min=1e-8,
         by_epoch=True),
]

train_cfg = dict(by_epoch=True, max_epochs=110, val_interval=110)
val_cfg = dict(fp16=True)
test_cfg = dict(fp16=True)
global_batch_size = 32  # kept on any number of GPUs: per GPU 32 / N (tools/train.py)
auto_scale_lr = dict(base_batch_size=32)
