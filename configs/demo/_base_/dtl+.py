# DTL+: DTL with the shared 3x3 depthwise conv over the 4x4 token grid.
_base_ = ['./dtl.py']

model = dict(backbone=dict(csn=dict(dwconv_kernel=3)))
