from .dtl_beit import DTLBEiT
from .dtl_convnext import DTLConvNeXt
from .dtl_deit3 import DTLDeiT3
from .dtl_eva02 import DTLViTEVA02
from .dtl_swin import DTLSwin
from .dtl_vit import DTLViT

#: DTL backbone -> the mmpretrain backbone it extends (registry names).
DTL_PARENTS = {
    'DTLViT': 'VisionTransformer',
    'DTLSwin': 'SwinTransformer',
    'DTLDeiT3': 'DeiT3',
    'DTLBEiT': 'BEiTViT',
    'DTLConvNeXt': 'ConvNeXt',
    'DTLViTEVA02': 'ViTEVA02',
}

__all__ = ['DTLBEiT', 'DTLConvNeXt', 'DTLDeiT3', 'DTLSwin', 'DTLViT', 'DTLViTEVA02', 'DTL_PARENTS']
