# UPerNet on ADE20K (512x512 crops, 160k iterations, 8 GPUs x 2 images; AdamW
# lr 6e-5 wd 0.01, linear warm-up then poly decay, as mmseg's
# swin/swin-base-patch4-window7-in22k-pre_upernet_8xb2-160k_ade20k-512x512.py)
# with a frozen Swin-B trunk (ImageNet-22k, window 7) fine-tuned by DTL+: only
# the Compact Side Network, the UPerNet decode head and the auxiliary FCN head
# train.
#
# CSN: the released Swin-B recipe, as the mmdet Swin-B configs: rank 4, taps
# before blocks 4-23 (stages 2-3, blocks counted 0-23 across stages 2-2-18-2),
# add back after blocks 14-23, 5x5 DWConv per stage that adds back (DTL+;
# csn.dwconv_kernel=0 gives plain DTL, see upernet_dtl-swin-b-*.py).
# The decode head reads all four stage outputs: those of stages 0-1 come from
# the frozen trunk without any activation kept for backward. The per-stage
# norms norm0-2 are not in classification checkpoints and stay frozen
# (LayerNorm without learnt affine): the heads' trainable 1x1 convs absorb any
# affine map after them.
# Every label map is checked against the 150 classes (CheckSegLabels).
#
# Weights: official swin_base_patch4_window7_224_22k.pth, converted:
#   python tools/model_converters/swin_to_mmpretrain.py \
#       swin_base_patch4_window7_224_22k.pth checkpoints/swin-b_in22k_mmpretrain.pth
_base_ = 'mmseg::swin/swin-base-patch4-window7-in22k-pre_upernet_8xb2-160k_ade20k-512x512.py'
custom_imports = dict(imports=['mmdtl'], allow_failed_imports=False)

pretrained = 'checkpoints/swin-b_in22k_mmpretrain.pth'
num_classes = 150
model = dict(
    backbone=dict(
        _delete_=True,
        type='mmpretrain.DTLSwin',
        arch='base',
        img_size=224,  # the pre-training size; any input size works
        patch_size=4,
        window_size=7,
        pad_small_map=True,  # pad maps smaller than a window, as mmseg's Swin
        drop_path_rate=0.3,  # mmseg's Swin-B UPerNet value
        out_indices=(0, 1, 2, 3),
        freeze_backbone=True,  # False = full fine-tuning (+ CSN) for comparison
        csn=dict(
            type='mmpretrain.CompactSideNetwork',  # mmseg scope: name the registry
            rank=4,
            taps=list(range(4, 24)),  # tap the input of blocks 4..23
            start=14,  # add back after blocks 14..23 (0-based)
            beta=100.,
            dwconv_kernel=5),  # 0 = DTL, 5 = DTL+
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[128, 256, 512, 1024], num_classes=num_classes),
    auxiliary_head=dict(in_channels=512, num_classes=num_classes))

# A label file with a class outside 0-149 (after reduce_zero_label) or 255 is
# an error naming the file, in training and in evaluation.
label_check = dict(type='CheckSegLabels', num_classes=num_classes, ignore_index=255)
train_pipeline = [t for step in _base_.train_pipeline for t in (
    [step, label_check] if step['type'] == 'LoadAnnotations' else [step])]
test_pipeline = [t for step in _base_.test_pipeline for t in (
    [step, label_check] if step['type'] == 'LoadAnnotations' else [step])]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

# The recipe's global batch (8 GPUs x 2): tools/train.py keeps it on any
# number of GPUs (16 / GPUs each); --auto-scale-lr keeps 2 per GPU and scales
# the learning rate from 16 instead.
global_batch_size = 16
auto_scale_lr = dict(enable=False, base_batch_size=16)

# mmseg's parameter-wise rules (no decay for norms and position tables) only
# concern the frozen trunk: AdamW lr 6e-5, wd 0.01 on everything that trains.
# (With freeze_backbone=False, set them again as in the mmseg config.)
optim_wrapper = dict(paramwise_cfg=None)

default_hooks = dict(
    # Atomic saves: a kill mid-save never loses the previous checkpoint.
    checkpoint=dict(type='AtomicCheckpointHook', by_epoch=False, interval=16000,
                    max_keep_ckpts=3),
    # Refuse training a frozen trunk no checkpoint was loaded into, and
    # testing a checkpoint without the trained side network and heads.
    trunk_check=dict(type='TrunkCheckHook'))
