# DTL+ on ViT-B/16 (ImageNet-21k), the released VTAB-1k recipe.
# The backbone weights come from tools/model_converters/vit_npz_to_mmpretrain.py
# (Google's ViT-B_16.npz); set `pretrained` to the converted file.
pretrained = 'checkpoints/vit-b16_in21k_mmpretrain.pth'

model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='DTLViT',
        arch='b',
        img_size=224,
        patch_size=16,
        drop_path_rate=0.1,
        csn=dict(
            type='CompactSideNetwork',
            rank=2,
            taps=list(range(12)),  # tap the input of every block
            start=6,  # add back after blocks 6..11 (0-based)
            beta=100.,
            dwconv_kernel=3),  # 0 = DTL, 3 = DTL+
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=None,
    head=dict(
        type='LinearClsHead',
        num_classes=100,
        in_channels=768,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
        topk=(1, 5),
        # The released head init (timm: trunc normal, std 0.02, zero bias).
        init_cfg=dict(type='TruncNormal', layer='Linear', std=0.02, bias=0.),
    ),
)
