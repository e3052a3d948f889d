# DTL+ on VTAB-1k CIFAR-100, set up to train on a CPU: the released recipe in
# fp32 (AMP is a GPU feature) with the frozen linear weights kept in oneDNN's
# packed layout. Same results within fp32 rounding; on the CPU of the README's
# benchmark a ViT-B step takes about half as long. For a deterministic
# pipeline add the prefix cache of `vit-b_vtab-cifar_cached.py` as well.
_base_ = './vit-b_vtab-cifar.py'

model = dict(backbone=dict(pack_frozen_weights=True))
optim_wrapper = dict(type='OptimWrapper')
