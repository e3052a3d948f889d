# RetinaNet + FPN on COCO (1x, SGD lr 0.01) with a frozen Swin-B trunk
# (ImageNet-22k, window 7) fine-tuned by DTL+ with the released Swin-B recipe:
# rank 4, taps before blocks 4-23 (stages 2-3), add back after blocks 14-23,
# 5x5 DWConv per stage that adds back. Everything else as the Swin-T config.
#
# Weights: see mask-rcnn_dtl+-swin-b-p4-w7_fpn_1x_coco.py.
_base_ = './retinanet_dtl+-swin-t-p4-w7_fpn_1x_coco.py'

pretrained = 'checkpoints/swin-b_in22k_mmpretrain.pth'
model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.3,  # the Swin paper's Swin-B detection value
        csn=dict(taps=list(range(4, 24)), start=14),
        init_cfg=dict(checkpoint=pretrained)),
    neck=dict(in_channels=[256, 512, 1024]))
