# Plain DTL (no DWConv after the add-back): everything else as the DTL+ config.
_base_ = './upernet_dtl+-vit-b16-mln_8xb2-160k_ade20k-512x512.py'

model = dict(backbone=dict(csn=dict(dwconv_kernel=0)))
