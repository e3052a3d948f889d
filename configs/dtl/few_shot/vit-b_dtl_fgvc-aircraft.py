# Plain DTL (no DWConv) on ViT-B/16, few-shot FGVC-Aircraft
# (train_scripts/vit/few_shot/fgvc-aircraft-FS/train_dtl_shot_*.sh).
_base_ = './vit-b_dtl+_fgvc-aircraft.py'

model = dict(backbone=dict(csn=dict(dwconv_kernel=0)))
lr_per_shot = {1: 1e-3, 2: 1e-3, 4: 1e-3, 8: 5e-3, 16: 8e-3}
