from .dtl_swin import DTLSwin
from .dtl_vit import DTLViT

__all__ = ['DTLSwin', 'DTLViT']
