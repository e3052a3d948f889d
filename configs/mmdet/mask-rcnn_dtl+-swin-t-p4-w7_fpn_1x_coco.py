# Mask R-CNN + FPN on COCO (1x: 12 epochs, AdamW lr 1e-4 wd 0.05, as mmdet's
# swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py) with a frozen Swin-T trunk
# fine-tuned by DTL+: only the Compact Side Network, the FPN and the heads train.
#
# CSN (Swin-T, depths 2-2-6-2, blocks 0-11 counted across stages), scaled
# from the released Swin-B recipe (rank 4, taps 4-23 = stages 2-3, add back
# after 14-23, i.e. from 10/18 into stage 2): rank 4, taps 4-11 (stages 2-3),
# add back after blocks 7-11 (from 3/6 into stage 2), 5x5 DWConv per stage
# that adds back (DTL+; csn.dwconv_kernel=0 gives plain DTL).
# FPN reads all four stage outputs: those of stages 0-1 (and block outputs of
# stage 2 before M) are task-independent, so they come from the frozen trunk
# without any activation kept for backward. The per-stage norms norm0-2 are
# new and stay frozen (LayerNorm without learnt affine): the FPN's trainable
# 1x1 lateral convs absorb any affine map.
#
# Weights: official swin_tiny_patch4_window7_224.pth (ImageNet-1k), converted:
#   python tools/model_converters/swin_to_mmpretrain.py \
#       swin_tiny_patch4_window7_224.pth checkpoints/swin-t_in1k_mmpretrain.pth
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'
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
        out_indices=(0, 1, 2, 3),
        freeze_backbone=True,  # False = full fine-tuning (+ CSN) for comparison
        csn=dict(
            type='mmpretrain.CompactSideNetwork',  # mmdet scope: name the registry
            rank=4,
            taps=list(range(4, 12)),  # tap the input of blocks 4..11
            start=7,  # add back after blocks 7..11 (0-based)
            beta=100.,
            dwconv_kernel=5),  # 0 = DTL, 5 = DTL+
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))

# mmdet's parameter-wise rules (no decay for norms and position tables) only
# concern the frozen trunk, and mmengine warns once per frozen parameter when
# any are set: AdamW lr 1e-4, wd 0.05 on everything that trains. (With
# freeze_backbone=False, set them again as in the mmdet config inherited here.)
optim_wrapper = dict(paramwise_cfg=None)

# Atomic saves: a kill mid-save never loses the previous checkpoint.
default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook', interval=1, max_keep_ckpts=3))
