from .metrics import MaskedAccuracy

__all__ = ['MaskedAccuracy']
