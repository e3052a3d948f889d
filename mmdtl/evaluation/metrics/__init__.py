from .masked_accuracy import MaskedAccuracy

__all__ = ['MaskedAccuracy']
