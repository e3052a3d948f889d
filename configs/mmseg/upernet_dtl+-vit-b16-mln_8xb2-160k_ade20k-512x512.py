# UPerNet on ADE20K (512x512 crops, 160k iterations, 8 GPUs x 2 images; AdamW
# lr 6e-5 wd 0.01, linear warm-up then poly decay, as mmseg's
# vit/vit_vit-b16-ln_mln_upernet_8xb2-160k_ade20k-512x512.py) with a frozen
# plain ViT-B/16 (ImageNet-21k) fine-tuned by DTL+: only the Compact Side
# Network, the multi-level neck, the UPerNet decode head and the auxiliary FCN
# head train.
#
# CSN: the released ViT-B recipe, as the mmdet ViT-B config: rank 2, taps
# before every block, add back after blocks 6-11, 3x3 DWConv over the patch
# grid (DTL+; csn.dwconv_kernel=0 gives plain DTL, see upernet_dtl-vit-b16-*.py).
# As mmseg's ViT UPerNet, the outputs of blocks 2, 5, 8 and 11 (stride 16,
# cls token dropped; the last one after the pre-trained final LayerNorm) go
# through mmseg's MultiLevelNeck to strides 4, 8, 16 and 32. Blocks 2 and 5 lie
# in the frozen prefix (before block 6 adds back): they come from the trunk as
# pre-trained, without any activation kept for backward.
# Every label map is checked against the 150 classes (CheckSegLabels).
#
# Weights: Google's ViT-B_16.npz (ImageNet-21k), converted:
#   python tools/model_converters/vit_npz_to_mmpretrain.py \
#       ViT-B_16.npz checkpoints/vit-b16_in21k_mmpretrain.pth
_base_ = 'mmseg::vit/vit_vit-b16-ln_mln_upernet_8xb2-160k_ade20k-512x512.py'
custom_imports = dict(imports=['mmdtl'], allow_failed_imports=False)

pretrained = 'checkpoints/vit-b16_in21k_mmpretrain.pth'
num_classes = 150
model = dict(
    # Google's ViT-B/16 is pre-trained on images scaled to [-1, 1].
    data_preprocessor=dict(mean=[127.5, 127.5, 127.5], std=[127.5, 127.5, 127.5]),
    pretrained=None,  # the backbone's init_cfg loads the weights
    backbone=dict(
        _delete_=True,
        type='mmpretrain.DTLViT',
        arch='b',
        img_size=224,  # the pre-trained position grid, resized to every input
        patch_size=16,
        drop_path_rate=0.1,  # mmseg's value for this recipe
        out_type='featmap',  # (B, 768, H/16, W/16), cls token dropped
        out_indices=(2, 5, 8, 11),
        final_norm=True,  # the pre-trained final LayerNorm on block 11's output
        freeze_backbone=True,  # False = full fine-tuning (+ CSN) for comparison
        csn=dict(
            type='mmpretrain.CompactSideNetwork',  # mmseg scope: name the registry
            rank=2,
            taps=list(range(12)),  # tap the input of every block
            start=6,  # add back after blocks 6..11 (0-based)
            beta=100.,
            dwconv_kernel=3),  # 0 = DTL, 3 = DTL+
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(num_classes=num_classes),
    auxiliary_head=dict(num_classes=num_classes))

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

# mmseg's parameter-wise rules (no decay for norms, position embedding and
# cls token) only concern the frozen trunk: AdamW lr 6e-5, wd 0.01 on
# everything that trains. (With freeze_backbone=False, set them again.)
optim_wrapper = dict(paramwise_cfg=None)

default_hooks = dict(
    # Atomic saves: a kill mid-save never loses the previous checkpoint.
    checkpoint=dict(type='AtomicCheckpointHook', by_epoch=False, interval=16000,
                    max_keep_ckpts=3),
    # Refuse training a frozen trunk no checkpoint was loaded into, and
    # testing a checkpoint without the trained side network and heads.
    trunk_check=dict(type='TrunkCheckHook'))
