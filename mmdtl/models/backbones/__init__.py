from .dtl_vit import DTLViT

__all__ = ['DTLViT']
