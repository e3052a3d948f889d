# Domain generalization (layout of the DTL release, "DG"): train on ImageNet
# 16-shot (NOAH split, `seed` 0/1/2), test one model on ImageNet val, -V2,
# -Sketch, -A and -R in one pass. Transforms as for few-shot FGVC.
# ImageNet-A/-R cover 200 classes: MaskedAccuracy reports them both over all
# 1000 classes (`<set>/top1`) and over their own 200 (`<set>/top1_masked`).
dataset_type = 'DomainGeneralization'
data_root = 'data/dg'
shot = 16
seed = 0
runner_type = 'FewShotRunner'
dg_targets = ['imagenet', 'imagenetv2', 'imagenet-sketch', 'imagenet-adversarial',
              'imagenet-rendition']

data_preprocessor = dict(
    mean=[127.5, 127.5, 127.5],
    std=[127.5, 127.5, 127.5],
    to_rgb=True,
)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=224, backend='pillow', interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(
        type='RandAugment',
        policies='timm_increasing',
        num_policies=2,
        total_level=10,
        magnitude_level=9,
        magnitude_std=0.5,
        hparams=dict(pad_val=[128, 128, 128], interpolation='bicubic')),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(256, 256), interpolation='bicubic', backend='pillow'),
    dict(type='CenterCrop', crop_size=224),
    # `domain` tells the metric which test set a sample is from
    dict(type='PackInputs',
         meta_keys=('sample_idx', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'flip',
                    'flip_direction', 'domain')),
]

train_dataloader = dict(
    batch_size=32,
    num_workers=4,
    dataset=dict(type=dataset_type, data_root=data_root, name='imagenet', split='train',
                 shot=shot, seed=seed, pipeline=train_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True),
    drop_last=True,  # as the released loader
    persistent_workers=True,
)
# The release trains for the full schedule and tests the last epoch.
val_dataloader = None
val_evaluator = None
test_dataloader = dict(
    batch_size=256,
    num_workers=4,
    dataset=dict(type=dataset_type, data_root=data_root, name=dg_targets, split='test',
                 pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False),
    persistent_workers=True,
)
test_evaluator = dict(type='MaskedAccuracy', group_key='domain')
