# DTL+ (3x3 DWConv) on ViT-B/16, few-shot Oxford-Flowers102
# (train_scripts/vit/few_shot/oxford-flowers102-FS/train_dtl+_shot_*.sh).
_base_ = './vit-b_dtl+_fgvc-aircraft.py'

dataset_name = 'oxford-flowers102'
model = dict(head=dict(num_classes=102))
train_dataloader = dict(dataset=dict(name=dataset_name))
val_dataloader = dict(dataset=dict(name=dataset_name))
test_dataloader = dict(dataset=dict(name=dataset_name))
lr_per_shot = {1: 3e-3, 2: 5e-3, 4: 8e-3, 8: 3e-3, 16: 3e-3}
