# Domain generalization (layout of the DTL release, "DG"): train on ImageNet
# 16-shot (NOAH split, `seed` 0/1/2), test on ImageNet val, -V2, -Sketch, -A
# and -R: `test_dataloader.dataset.name` is one of them (the paper's per-target
# configs) or a list tested in one pass (all five here). Transforms, loaders
# and FewShotRunner as for few-shot FGVC (inherited).
# ImageNet-A/-R cover 200 classes: MaskedAccuracy reports them both over all
# 1000 classes (`<set>/top1`) and over their own 200 (`<set>/top1_masked`).
_base_ = ['./few_shot.py']

dataset_type = 'DomainGeneralization'
data_root = 'data/dg'
dataset_name = 'imagenet'  # the training set
dg_targets = ['imagenet', 'imagenetv2', 'imagenet-sketch', 'imagenet-adversarial',
              'imagenet-rendition']

test_pipeline = [
    dict(type='LoadImageFromFilePIL'),  # PIL RGB, as the release's default_loader
    dict(type='Resize', scale=(256, 256), interpolation='bicubic', backend='pillow'),
    dict(type='CenterCrop', crop_size=224),
    # `domain` tells the metric which test set a sample is from
    dict(type='PackInputs',
         meta_keys=('sample_idx', 'img_path', 'ori_shape', 'img_shape', 'scale_factor', 'flip',
                    'flip_direction', 'domain')),
]

train_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root, name=dataset_name))
# The release trains for the full schedule and tests the last epoch.
val_dataloader = None
val_evaluator = None
test_dataloader = dict(dataset=dict(type=dataset_type, data_root=data_root, name=dg_targets,
                                    pipeline=test_pipeline))
test_evaluator = dict(_delete_=True, type='MaskedAccuracy', group_key='domain')
