# Few-shot FGVC on the NOAH splits (layout of the DTL release, "FGFS").
# Train: RandomResizedCrop 224 (bicubic) + horizontal flip + RandAugment as timm's
# rand-m9-mstd0.5-inc1; val/test: resize to 256x256 (bicubic), centre crop 224.
# mean = std = 0.5 as for VTAB.
# `shot` and `seed` select the train split; they act through runner_type
# FewShotRunner, so `--cfg-options shot=4 seed=1` works (a config variable alone
# would be resolved when the file is read).
dataset_type = 'FewShotFGVC'
data_root = 'data/fgfs'
dataset_name = 'fgvc-aircraft'
shot = 16
seed = 0
runner_type = 'FewShotRunner'

data_preprocessor = dict(
    mean=[127.5, 127.5, 127.5],
    std=[127.5, 127.5, 127.5],
    to_rgb=True,
)

train_pipeline = [
    dict(type='LoadImageFromFilePIL'),  # PIL RGB, as the release's default_loader
    dict(type='RandomResizedCrop', scale=224, backend='pillow', interpolation='bicubic'),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(
        type='RandAugment',
        policies='timm_increasing',
        num_policies=2,
        total_level=10,
        magnitude_level=9,
        magnitude_std=0.5,
        # timm's img_mean for mean 0.5
        hparams=dict(pad_val=[128, 128, 128], interpolation='bicubic')),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFilePIL'),  # PIL RGB, as the release's default_loader
    dict(type='Resize', scale=(256, 256), interpolation='bicubic', backend='pillow'),
    dict(type='CenterCrop', crop_size=224),
    dict(type='PackInputs'),
]

train_dataloader = dict(
    batch_size=32,
    num_workers=4,
    dataset=dict(type=dataset_type, data_root=data_root, name=dataset_name, split='train',
                 shot=shot, seed=seed, pipeline=train_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True),
    drop_last=True,  # as the released loader
    persistent_workers=True,
)
val_dataloader = dict(
    batch_size=256,
    num_workers=4,
    dataset=dict(type=dataset_type, data_root=data_root, name=dataset_name, split='val',
                 pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False),
    persistent_workers=True,
)
val_evaluator = dict(type='Accuracy', topk=(1, 5))
test_dataloader = dict(
    batch_size=256,
    num_workers=4,
    dataset=dict(type=dataset_type, data_root=data_root, name=dataset_name, split='test',
                 pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False),
    persistent_workers=True,
)
test_evaluator = val_evaluator
