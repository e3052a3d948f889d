# A smoke config: DTL+ on a small, randomly initialised frozen ViT over
# scikit-learn's bundled digits, written as a VTAB-1k task folder by
# tools/misc/make_digits_vtab.py (the tools' tests run it). It shows the
# plumbing, not transfer: `make demo` (configs/demo/, tools/misc/transfer_demo.py)
# transfers a pre-trained backbone and compares the methods.
_base_ = './vit-b_vtab-cifar.py'

task = 'digits'
img_size = 32
data_root = 'data/digits-vtab'

model = dict(
    backbone=dict(
        arch=dict(_delete_=True, embed_dims=64, num_layers=6, num_heads=4,
                  feedforward_channels=128),
        img_size=img_size,
        patch_size=4,
        drop_path_rate=0.,
        csn=dict(rank=2, taps=list(range(6)), start=3, dwconv_kernel=3),
        init_cfg=None,
        allow_random_trunk=True),  # deliberate: no pre-trained weights here
    head=dict(num_classes=10, in_channels=64))

pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(img_size, img_size), interpolation='bicubic', backend='pillow'),
    dict(type='PackInputs'),
]
_dataset = dict(data_root=data_root, task=task, num_classes=10, pipeline=pipeline)
train_dataloader = dict(num_workers=2, dataset=_dataset)
val_dataloader = dict(batch_size=128, num_workers=2, dataset=_dataset)
test_dataloader = val_dataloader

optim_wrapper = dict(type='OptimWrapper', optimizer=dict(lr=5e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-2, by_epoch=True, begin=0, end=1,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=1e-6, by_epoch=True, begin=1, end=15),
]
train_cfg = dict(max_epochs=15, val_interval=5)
default_hooks = dict(logger=dict(interval=10), checkpoint=dict(interval=5))
