# DTL+ (3x3 DWConv) on ViT-B/16, few-shot FGVC-Aircraft: the released recipe
# (train_scripts/vit/few_shot/fgvc-aircraft-FS/train_dtl+_shot_*.sh): rank 2,
# beta 100, taps 0-11, add back after 6-11, drop path 0, wd 0.05, batch 32,
# 110 epochs; validation every 10 epochs (10, ..., 110) and the best-validation
# checkpoint is the one tested. Pick the split with `--cfg-options shot=<1|2|4|8|16> seed=<0|1|2>`;
# the run goes to <work_dir>/shot<k>_seed<s>.
_base_ = [
    '../../_base_/models/dtl_vit-b16.py',
    '../../_base_/datasets/few_shot.py',
    '../../_base_/schedules/few_shot_110e.py',
    '../../_base_/default_runtime.py',
]

dataset_name = 'fgvc-aircraft'
model = dict(
    backbone=dict(drop_path_rate=0., csn=dict(dwconv_kernel=3)),
    head=dict(num_classes=100))
train_dataloader = dict(dataset=dict(name=dataset_name))
val_dataloader = dict(dataset=dict(name=dataset_name))
test_dataloader = dict(dataset=dict(name=dataset_name))

# Released learning rate per number of shots.
lr_per_shot = {1: 1e-3, 2: 1e-3, 4: 3e-3, 8: 5e-3, 16: 3e-3}

default_hooks = dict(
    checkpoint=dict(interval=10, max_keep_ckpts=1, save_best='accuracy/top1', rule='greater'))
