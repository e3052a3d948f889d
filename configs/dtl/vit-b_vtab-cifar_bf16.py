# DTL+ on VTAB-1k CIFAR-100 in bfloat16 mixed precision (the base recipe uses
# fp16 AMP on GPU) with activation checkpointing of the frozen suffix: the
# smallest-memory setting of the released recipe.
_base_ = './vit-b_vtab-cifar.py'

model = dict(backbone=dict(checkpoint_suffix=True))
optim_wrapper = dict(type='AmpOptimWrapper', dtype='bfloat16')
