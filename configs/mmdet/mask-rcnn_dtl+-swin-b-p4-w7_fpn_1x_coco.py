# Mask R-CNN + FPN on COCO (1x, AdamW lr 1e-4 wd 0.05) with a frozen Swin-B
# trunk (ImageNet-22k, window 7) fine-tuned by DTL+ with the released Swin-B
# recipe: rank 4, taps before blocks 4-23 (stages 2-3), add back after blocks
# 14-23, 5x5 DWConv per stage that adds back. Everything else as the Swin-T
# config.
#
# Weights: official swin_base_patch4_window7_224_22k.pth, converted:
#   python tools/model_converters/swin_to_mmpretrain.py \
#       swin_base_patch4_window7_224_22k.pth checkpoints/swin-b_in22k_mmpretrain.pth
_base_ = './mask-rcnn_dtl+-swin-t-p4-w7_fpn_1x_coco.py'

pretrained = 'checkpoints/swin-b_in22k_mmpretrain.pth'
model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.3,  # the Swin paper's Swin-B detection value
        csn=dict(taps=list(range(4, 24)), start=14),
        init_cfg=dict(checkpoint=pretrained)),
    neck=dict(in_channels=[128, 256, 512, 1024]))
