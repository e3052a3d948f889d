# Plain DTL (no DWConv) on ViT-B/16, few-shot Stanford-Cars
# (train_scripts/vit/few_shot/standford-cars-FS/train_dtl_shot_*.sh).
_base_ = './vit-b_dtl_fgvc-aircraft.py'

dataset_name = 'standford-cars'
model = dict(head=dict(num_classes=196))
train_dataloader = dict(dataset=dict(name=dataset_name))
val_dataloader = dict(dataset=dict(name=dataset_name))
test_dataloader = dict(dataset=dict(name=dataset_name))
lr_per_shot = {1: 1e-3, 2: 1e-3, 4: 3e-3, 8: 3e-3, 16: 3e-3}
