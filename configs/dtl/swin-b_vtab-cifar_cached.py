# DTL+ on Swin-B for VTAB-1k CIFAR-100 with the frozen-prefix feature cache:
# VTAB's pipeline (resize + normalise) is deterministic and this recipe has no
# drop path, so blocks 0..14 (patch merging included) are computed once per
# image and reused for the other 99 epochs (equal within fp16 rounding). Memory
# in fp16: about 2.3 MB per image (11 tap inputs and one output, 14x14x512).
_base_ = './swin-b_vtab-cifar.py'

model = dict(backbone=dict(prefix_cache=dict(storage='memory', dtype='float16')))
custom_hooks = [dict(type='PrefixCacheHook')]
