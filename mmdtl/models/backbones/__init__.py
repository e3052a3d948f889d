from .dtl_beit import DTLBEiT
from .dtl_convnext import DTLConvNeXt
from .dtl_deit3 import DTLDeiT3
from .dtl_swin import DTLSwin
from .dtl_vit import DTLViT

__all__ = ['DTLBEiT', 'DTLConvNeXt', 'DTLDeiT3', 'DTLSwin', 'DTLViT']
