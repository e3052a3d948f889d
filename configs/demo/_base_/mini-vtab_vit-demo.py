# The demo's transfer recipe: the pre-trained demo ViT
# (configs/pretrain/vit-demo_fashion-mnist.py, shipped in checkpoints/demo/)
# on one task of the mini VTAB-1k (tools/misc/make_mini_vtab.py): train on
# train800val200, test on test, as the VTAB-1k protocol. Full fine-tuning;
# the other methods change the backbone only. The method bases next to this
# file set the backbone, the task configs in configs/demo/ the task and the lr
# chosen by tools/misc/sweep_demo_lr.py (train800 -> val200).
_base_ = ['../../_base_/default_runtime.py']

data_root = 'data/mini-vtab'
task = 'fashion'
num_classes = 10
pretrained = 'checkpoints/demo/vit-demo_fashion-mnist.pth'
max_epochs = 10
lr = 1e-3

vit = dict(
    type='VisionTransformer',
    arch=dict(embed_dims=96, num_layers=6, num_heads=3, feedforward_channels=384),
    img_size=28,
    patch_size=7,
    in_channels=1,
    out_type='avg_featmap',
    final_norm=False,
    drop_path_rate=0.,
    init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.'))

model = dict(
    type='ImageClassifier',
    backbone=vit,
    neck=None,
    head=dict(
        type='LinearClsHead',
        num_classes=num_classes,
        in_channels=96,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
        topk=(1, )),
)

# As the pre-training: grey 28x28 images scaled to [-1, 1].
data_preprocessor = dict(num_classes=num_classes, mean=[127.5], std=[127.5], to_rgb=False)
pipeline = [
    dict(type='LoadImageFromFile', color_type='grayscale'),
    # No-op on the loader's grey images; one channel again for the inference
    # APIs, which decode paths in colour and pass arrays as given.
    dict(type='ToGrayscale'),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=32,
    num_workers=0,
    dataset=dict(type='VTAB1k', data_root=data_root, task=task, num_classes=num_classes,
                 split='train800val200', pipeline=pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True),
    drop_last=True,
)
val_dataloader = dict(
    batch_size=250,
    num_workers=0,
    dataset=dict(type='VTAB1k', data_root=data_root, task=task, num_classes=num_classes,
                 split='test', pipeline=pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False),
)
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_dataloader = val_dataloader
test_evaluator = val_evaluator

# The released VTAB-1k schedule, shortened: AdamW (no decay on biases), one
# warm-up epoch, cosine to the end, updated every iteration.
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=lr, weight_decay=0.05),
    paramwise_cfg=dict(bias_decay_mult=0.),
)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=True, begin=0, end=1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=True, begin=1, end=max_epochs,
         convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=max_epochs)
val_cfg = dict()
test_cfg = dict()

default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=max_epochs, max_keep_ckpts=1),
)
randomness = dict(seed=0, deterministic=False)
