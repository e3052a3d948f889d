# Mask R-CNN on COCO with a plain ViT-B/16 (ImageNet-21k) fine-tuned by DTL+,
# ViTDet-style: the last block output (stride 16, after the pre-trained final
# LayerNorm) goes through a simple feature pyramid (deconvs / identity / max
# pooling -> strides 4-32, plus a stride-64 level), with LayerNorm in the
# pyramid and in the heads (ViTDet's 2-conv RPN head, 4conv1fc box head and
# normed mask head).
# Only the Compact Side Network, the pyramid and the heads train.
#
# Memory: with a frozen trunk, most of what a step keeps for backward belongs
# to what trains: the pyramid's stride-4/8 maps, the RPN convs over them and
# the 4-conv box head over 512 RoIs per image. The pyramid levels and the
# RPN/box/mask heads therefore run under activation checkpointing (with_cp,
# mmdtl's Checkpoint*Head = mmdet's heads plus with_cp), and so do the frozen
# blocks after M (checkpoint_suffix): same outputs and gradients, one more
# forward of those parts per step. tools/analysis/detection_memory.py
# measures it (docs/detection.md); with_cp=False / checkpoint_suffix=False
# give the plain step.
#
# CSN: the released ViT-B recipe (rank 2, taps before every block, add back
# after blocks 6-11, 3x3 DWConv over the patch grid; csn.dwconv_kernel=0 gives
# plain DTL).
# Data and schedule: the standard COCO 1x recipe of the Swin configs (resize
# to 1333x800, flip, 12 epochs, AdamW lr 1e-4 wd 0.05) rather than ViTDet's
# 1024x1024 large-scale jitter, which is made for its 100-epoch schedule; the
# two sizes have about as many pixels. The ViT runs global attention (no
# windows); images are padded to a multiple of 32, so the patch-16 grid fits.
#
# Weights: Google's ViT-B_16.npz (ImageNet-21k), converted:
#   python tools/model_converters/vit_npz_to_mmpretrain.py \
#       ViT-B_16.npz checkpoints/vit-b16_in21k_mmpretrain.pth
_base_ = 'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['mmdtl'], allow_failed_imports=False)

pretrained = 'checkpoints/vit-b16_in21k_mmpretrain.pth'
norm_cfg = dict(type='mmpretrain.LN2d', requires_grad=True)  # LayerNorm over channels
model = dict(
    # Google's ViT-B/16 is pre-trained on images scaled to [-1, 1].
    data_preprocessor=dict(mean=[127.5, 127.5, 127.5], std=[127.5, 127.5, 127.5]),
    backbone=dict(
        _delete_=True,
        type='mmpretrain.DTLViT',
        arch='b',
        img_size=224,  # the pre-trained position grid, resized to every input
        patch_size=16,
        drop_path_rate=0.1,
        out_type='featmap',  # (B, 768, H/16, W/16), cls token dropped
        out_indices=-1,
        # The pre-trained final LayerNorm (frozen, free) normalises what the
        # pyramid reads; ViTDet drops it as it fine-tunes the whole ViT.
        final_norm=True,
        freeze_backbone=True,  # False = full fine-tuning (+ CSN) for comparison
        checkpoint_suffix=True,  # recompute blocks 7-11 in backward (tap + block + add-back)
        csn=dict(
            type='mmpretrain.CompactSideNetwork',  # mmdet scope: name the registry
            rank=2,
            taps=list(range(12)),  # tap the input of every block
            start=6,  # add back after blocks 6..11 (0-based)
            beta=100.,
            dwconv_kernel=3),  # 0 = DTL, 3 = DTL+
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(
        _delete_=True,
        type='SimpleFPN',
        backbone_channel=768,
        in_channels=[192, 384, 768, 768],
        out_channels=256,
        num_outs=5,
        norm_cfg=norm_cfg,
        with_cp=True),  # checkpoint every pyramid level
    rpn_head=dict(type='CheckpointRPNHead', num_convs=2, with_cp=True),
    roi_head=dict(
        bbox_head=dict(
            type='CheckpointShared4Conv1FCBBoxHead',  # Shared4Conv1FCBBoxHead + with_cp
            conv_out_channels=256,
            norm_cfg=norm_cfg,
            with_cp=True),
        mask_head=dict(type='CheckpointFCNMaskHead', norm_cfg=norm_cfg, with_cp=True)))

max_epochs = 12
train_cfg = dict(max_epochs=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=1000),
    dict(
        type='MultiStepLR',
        begin=0,
        end=max_epochs,
        by_epoch=True,
        milestones=[8, 11],
        gamma=0.1)
]
optim_wrapper = dict(
    type='OptimWrapper',
    # No decay for the LayerNorms of the pyramid and heads, as ViTDet (mmengine
    # then logs one line per frozen trunk parameter, which it leaves out).
    paramwise_cfg=dict(
        norm_decay_mult=0.,
        custom_keys={
            'pos_embed': dict(decay_mult=0.),
            'cls_token': dict(decay_mult=0.),
        }),
    optimizer=dict(
        _delete_=True, type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.05))

# Atomic saves: a kill mid-save never loses the previous checkpoint.
default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook', interval=1, max_keep_ckpts=3))
