# DTL+ (3x3 DWConv) on ViT-B/16, few-shot Food-101
# (train_scripts/vit/few_shot/food101-FS/train_dtl+_shot_*.sh).
_base_ = './vit-b_dtl+_fgvc-aircraft.py'

dataset_name = 'food101'
model = dict(head=dict(num_classes=101))
train_dataloader = dict(dataset=dict(name=dataset_name))
val_dataloader = dict(dataset=dict(name=dataset_name))
test_dataloader = dict(dataset=dict(name=dataset_name))
lr_per_shot = {1: 1e-3, 2: 1e-3, 4: 1e-3, 8: 1e-3, 16: 1e-3}
