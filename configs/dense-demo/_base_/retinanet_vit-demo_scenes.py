# Detection on the dense demo scenes (tools/misc/make_dense_scenes.py: 112x112
# grey scenes of Fashion-MNIST test items and digits, 20 classes), RetinaNet on
# the demo ViT through a ViTDet-style simple pyramid (64 channels). The methods
# (configs/dense-demo/retinanet_vit-demo_<method>_scenes.py) change the
# backbone and the lr only; this file is full fine-tuning.
_base_ = [
    'mmdet::_base_/models/retinanet_r50_fpn.py', 'mmdet::_base_/default_runtime.py',
    './vit-demo_backbones.py'
]
custom_imports = dict(imports=['mmdtl'], allow_failed_imports=False)

data_root = 'data/dense-scenes'
num_classes = 20
max_epochs = 4
lr = 1e-4

model = dict(
    # As the pre-training: grey images scaled to [-1, 1]; scenes are 112 px,
    # a multiple of the patch size 7.
    data_preprocessor=dict(mean=[127.5], std=[127.5], bgr_to_rgb=False, pad_size_divisor=7),
    backbone=dict(_delete_=True, **_base_.backbones.full),
    # Strides 7, 14, 28: the token map, its 2x2 max pooling and one more
    # subsampling. The upsampled levels (strides 1.75 and 3.5) are not built:
    # objects are 20 px or larger, and the 32x32 map alone made a training
    # step about 4x slower on CPU.
    neck=dict(
        _delete_=True,
        type='SimpleFPN',
        backbone_channel=96,
        in_channels=[24, 48, 96, 96],
        out_channels=64,
        start_level=2,
        num_outs=3,
        norm_cfg=dict(type='mmpretrain.LN2d', requires_grad=True)),
    bbox_head=dict(
        num_classes=num_classes,
        in_channels=64,
        feat_channels=64,
        stacked_convs=2,
        # Anchors of 14-89 px (2 x stride x 2^(0, 1/3, 2/3)) for objects of 20-56 px.
        anchor_generator=dict(octave_base_scale=2, strides=[7, 14, 28])))

pipeline = [
    dict(type='LoadImageFromFile', color_type='grayscale'),
    # No-op on the loader's grey images; one channel again for the inferencers
    # (DetInferencer, MMSegInferencer), which pass arrays on as given.
    dict(type='mmpretrain.ToGrayscale'),
    dict(type='LoadAnnotations', with_bbox=True),
    # The scenes are 112 px already: records the scale factor (1) mmdet's
    # heads and metric expect.
    dict(type='Resize', scale=(112, 112), keep_ratio=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                                          'scale_factor')),
]


def scenes(split, shuffle):
    return dict(
        batch_size=8,
        num_workers=0,
        sampler=dict(type='DefaultSampler', shuffle=shuffle),
        dataset=dict(
            type='DenseScenesCocoDataset',
            data_root=data_root,
            ann_file=f'annotations/instances_{split}.json',
            data_prefix=dict(img=f'img_dir/{split}/'),
            filter_cfg=dict(filter_empty_gt=False),
            test_mode=not shuffle,
            pipeline=pipeline))


train_dataloader = scenes('train', True)
val_dataloader = scenes('test', False)
test_dataloader = val_dataloader
val_evaluator = dict(
    type='CocoMetric', ann_file=f'{data_root}/annotations/instances_test.json', metric='bbox')
test_evaluator = val_evaluator

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=lr, weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0.),
    clip_grad=dict(max_norm=10., norm_type=2))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=True, begin=0, end=1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=True, begin=1, end=max_epochs,
         convert_to_iter_based=True),
]
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs, val_interval=max_epochs)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(logger=dict(interval=25), checkpoint=dict(interval=max_epochs))
randomness = dict(seed=0, deterministic=False)
