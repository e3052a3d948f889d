# LoRA (mmpretrain's LoRAModel) on every block's qkv projection, rank 8,
# alpha 8; the rest of the trunk frozen, the head trains.
_base_ = ['./mini-vtab_vit-demo.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='LoRAModel',
        module={{_base_.vit}},
        rank=8,
        alpha=8,
        targets=[dict(type='qkv')]))
