# Pre-training of the demo backbone: a small mmpretrain VisionTransformer
# (6 blocks of 96 dims, 3 heads, patch 7 on 28x28 grey images: a 4x4 grid)
# trained from scratch on the 60,000 Fashion-MNIST training images.
# tools/misc/pretrain_demo_backbone.py runs it and writes the shipped
# checkpoint (checkpoints/demo/); the demo's mini VTAB-1k never uses these
# 60,000 images. The data come from Debian's dataset-fashion-mnist package
# (uncompressed into data/fashion-mnist by the tool; nothing is downloaded).
_base_ = ['../_base_/default_runtime.py']

data_root = 'data/fashion-mnist'
max_epochs = 8
base_lr = 2e-3

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='VisionTransformer',
        arch=dict(embed_dims=96, num_layers=6, num_heads=3, feedforward_channels=384),
        img_size=28,
        patch_size=7,
        in_channels=1,
        # the DTL recipe's features: mean of the patch tokens, then LayerNorm
        # (ln2), so every demo method reads the trunk the same way
        out_type='avg_featmap',
        final_norm=False,
        drop_path_rate=0.),
    neck=None,
    head=dict(
        type='LinearClsHead',
        num_classes=10,
        in_channels=96,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
        topk=(1, )),
)

data_preprocessor = dict(num_classes=10, mean=[127.5], std=[127.5], to_rgb=False)

train_pipeline = [
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [dict(type='PackInputs')]

train_dataloader = dict(
    batch_size=128,
    num_workers=0,  # the pipeline is a flip: a worker process would only compete for 2 cores
    dataset=dict(type='FashionMNIST', data_root=data_root, download=False,
                 pipeline=train_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True),
)
# The 10,000 test images: evaluated once, after the last epoch, to report the
# backbone's accuracy; no choice is made on them.
val_dataloader = dict(
    batch_size=500,
    num_workers=0,
    dataset=dict(type='FashionMNIST', data_root=data_root, download=False, test_mode=True,
                 pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False),
)
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_dataloader = val_dataloader
test_evaluator = val_evaluator

optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=base_lr, weight_decay=0.05),
    paramwise_cfg=dict(
        norm_decay_mult=0.,
        bias_decay_mult=0.,
        custom_keys={'.cls_token': dict(decay_mult=0.), '.pos_embed': dict(decay_mult=0.)}),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=True, begin=0, end=1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-5, by_epoch=True, begin=1, end=max_epochs,
         convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=max_epochs)
val_cfg = dict()
test_cfg = dict()

default_hooks = dict(
    logger=dict(interval=100),
    checkpoint=dict(interval=1, max_keep_ckpts=1),
)
randomness = dict(seed=0, deterministic=False)
