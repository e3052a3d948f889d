# Semantic segmentation on the dense demo scenes (tools/misc/make_dense_scenes.py:
# 112x112 grey scenes, background + 20 classes), an FCN head on the demo ViT's
# stride-7 token map. The methods
# (configs/dense-demo/fcn_vit-demo_<method>_scenes.py) change the backbone and
# the lr only; this file is full fine-tuning.
_base_ = ['mmseg::_base_/default_runtime.py', './vit-demo_backbones.py']
custom_imports = dict(imports=['mmdtl'], allow_failed_imports=False)

data_root = 'data/dense-scenes'
num_classes = 21  # background + 20 object classes
max_epochs = 6
lr = 1e-4

model = dict(
    type='EncoderDecoder',
    # As the pre-training: grey images scaled to [-1, 1].
    data_preprocessor=dict(
        type='SegDataPreProcessor', mean=[127.5], std=[127.5], bgr_to_rgb=False, pad_val=0,
        seg_pad_val=255, size_divisor=7),
    backbone=_base_.backbones.full,
    decode_head=dict(
        type='FCNHead',
        in_channels=96,
        channels=64,
        num_convs=2,
        concat_input=False,
        dropout_ratio=0.,
        num_classes=num_classes,
        norm_cfg=dict(type='BN', requires_grad=True),
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))

pipeline = [
    dict(type='LoadImageFromFile', color_type='grayscale'),
    # No-op on the loader's grey images; one channel again for the inferencers
    # (DetInferencer, MMSegInferencer), which pass arrays on as given.
    dict(type='mmpretrain.ToGrayscale'),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]


def scenes(split, shuffle):
    return dict(
        batch_size=8,
        num_workers=0,
        sampler=dict(type='DefaultSampler', shuffle=shuffle),
        dataset=dict(
            type='DenseScenesSegDataset',
            data_root=data_root,
            data_prefix=dict(img_path=f'img_dir/{split}', seg_map_path=f'ann_dir/{split}'),
            pipeline=pipeline))


train_dataloader = scenes('train', True)
val_dataloader = scenes('test', False)
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=lr, weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0.),
    clip_grad=None)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=True, begin=0, end=1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=True, begin=1, end=max_epochs,
         convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=max_epochs)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=25, log_metric_by_epoch=True),
    checkpoint=dict(type='CheckpointHook', by_epoch=True, interval=max_epochs))
randomness = dict(seed=0, deterministic=False)
