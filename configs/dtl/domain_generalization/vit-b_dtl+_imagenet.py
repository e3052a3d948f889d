# DTL+ (3x3 DWConv) on ViT-B/16, domain generalization as the paper ran it:
# trained on ImageNet 16-shot (`--cfg-options seed=<0|1|2>`, run in
# <work_dir>/shot16_seed<s>), the last checkpoint tested on ImageNet val.
# Released recipe (train_scripts/vit/domain_generalization/imagenet/train_dtl+.sh):
# rank 2, beta 100, taps 0-11, add back after 6-11, lr 1e-4, drop path 0,
# wd 0.05, batch 32, 110 epochs (timm's cosine schedule). The release trains
# one model per target with its own lr: the siblings `_imagenet-v2.py` (1e-4),
# `_imagenet-sketch.py` (5e-5), `_imagenet-a.py` (8e-5) and `_imagenet-r.py`
# (3e-5). all_targets/ tests one model (this recipe) on all five at once.
_base_ = [
    '../../_base_/models/dtl_vit-b16.py',
    '../../_base_/datasets/domain_generalization.py',
    '../../_base_/schedules/few_shot_110e.py',
    '../../_base_/default_runtime.py',
]

model = dict(
    backbone=dict(drop_path_rate=0., csn=dict(dwconv_kernel=3)),
    head=dict(num_classes=1000))
test_dataloader = dict(dataset=dict(name='imagenet'))
optim_wrapper = dict(optimizer=dict(lr=1e-4))
val_cfg = None  # no validation set: the last epoch is tested
