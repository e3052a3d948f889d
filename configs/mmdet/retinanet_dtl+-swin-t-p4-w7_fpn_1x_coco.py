# RetinaNet + FPN on COCO (1x: 12 epochs, SGD lr 0.01, as mmdet's
# swin/retinanet_swin-t-p4-w7_fpn_1x_coco.py) with a frozen Swin-T trunk
# fine-tuned by DTL+: only the Compact Side Network, the FPN and the head train.
#
# CSN as in mask-rcnn_dtl+-swin-t-p4-w7_fpn_1x_coco.py: rank 4, taps 4-11,
# add back after blocks 7-11, 5x5 DWConv (csn.dwconv_kernel=0: plain DTL).
# As mmdet's recipe, FPN reads stages 1-3 (P3-P5) and adds P6-P7 by convs:
# RetinaNet never uses the stride-4 map.
#
# Weights: see mask-rcnn_dtl+-swin-t-p4-w7_fpn_1x_coco.py.
_base_ = 'mmdet::swin/retinanet_swin-t-p4-w7_fpn_1x_coco.py'
custom_imports = dict(imports=['mmdtl'], allow_failed_imports=False)

pretrained = 'checkpoints/swin-t_in1k_mmpretrain.pth'
model = dict(
    backbone=dict(
        _delete_=True,
        type='mmpretrain.DTLSwin',
        arch='tiny',
        img_size=224,  # the pre-training size; any input size works
        patch_size=4,
        window_size=7,
        pad_small_map=True,  # pad maps smaller than a window, as mmdet's Swin
        drop_path_rate=0.2,  # mmdet's Swin-T detection value
        out_indices=(1, 2, 3),
        freeze_backbone=True,  # False = full fine-tuning (+ CSN) for comparison
        csn=dict(
            type='mmpretrain.CompactSideNetwork',  # mmdet scope: name the registry
            rank=4,
            taps=list(range(4, 12)),  # tap the input of blocks 4..11
            start=7,  # add back after blocks 7..11 (0-based)
            beta=100.,
            dwconv_kernel=5),  # 0 = DTL, 5 = DTL+
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[192, 384, 768], start_level=0, num_outs=5))

# Atomic saves: a kill mid-save never loses the previous checkpoint.
default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook', interval=1, max_keep_ckpts=3))
