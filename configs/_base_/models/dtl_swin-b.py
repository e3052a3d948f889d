# DTL+ on Swin-B (ImageNet-22k, window 7, 224x224), the released VTAB-1k recipe
# (train_scripts/swin/vtab/*/train_dtl+.sh): rank 4, taps before blocks 4-23,
# add back after blocks 14-23 (0-based, counted across stages), beta 100 and a
# 5x5 DWConv per stage that adds back (stages 2 and 3).
# The backbone weights come from tools/model_converters/swin_to_mmpretrain.py
# (swin_base_patch4_window7_224_22k.pth); set `pretrained` to the converted file.
pretrained = 'checkpoints/swin-b_in22k_mmpretrain.pth'

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='DTLSwin',
        arch='base',
        img_size=224,
        patch_size=4,
        window_size=7,
        drop_path_rate=0.,
        out_indices=(3, ),
        csn=dict(
            type='CompactSideNetwork',
            rank=4,
            taps=list(range(4, 24)),  # tap the input of blocks 4..23
            start=14,  # add back after blocks 14..23
            beta=100.,
            dwconv_kernel=5),  # 0 = DTL, 5 = DTL+
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    # Final stage norm (norm3), then the mean over tokens, as in the official forward.
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=100,
        in_channels=1024,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
        topk=(1, 5),
        # The released head init (timm: trunc normal, std 0.02, zero bias).
        init_cfg=dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.),
    ),
)
