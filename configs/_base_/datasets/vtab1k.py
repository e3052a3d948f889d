# VTAB-1k: resize to 224 (bicubic), mean = std = 0.5, no augmentation. Images
# are decoded and resized with PIL as the release does (docs/data_preparation.md).
dataset_type = 'VTAB1k'
data_root = 'data/vtab-1k'
task = 'cifar'
img_size = 224

data_preprocessor = dict(
    mean=[127.5, 127.5, 127.5],
    std=[127.5, 127.5, 127.5],
    to_rgb=True,
)

train_pipeline = [
    dict(type='LoadImageFromFilePIL'),  # PIL RGB, as the release's default_loader
    dict(type='Resize', scale=(img_size, img_size), interpolation='bicubic', backend='pillow'),
    dict(type='PackInputs'),
]
test_pipeline = train_pipeline

train_dataloader = dict(
    batch_size=32,
    num_workers=4,
    dataset=dict(type=dataset_type, data_root=data_root, task=task,
                 split='train800val200', pipeline=train_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True),
    drop_last=True,  # as the released loader
    persistent_workers=True,
)
val_dataloader = dict(
    batch_size=256,
    num_workers=4,
    dataset=dict(type=dataset_type, data_root=data_root, task=task,
                 split='test', pipeline=test_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=False),
    persistent_workers=True,
)
val_evaluator = dict(type='Accuracy', topk=(1, 5))
test_dataloader = val_dataloader
test_evaluator = val_evaluator
