"""Necks for dense prediction with DTL backbones.

They are registered in mmdet's registry, so they need mmdet; mmdtl itself
(classification) keeps working without it.
"""
import importlib.util

__all__ = []

# Import only when mmdet is installed; a broken mmdet install still raises.
if importlib.util.find_spec('mmdet') is not None:
    from .simple_fpn import SimpleFPN  # noqa: F401
    __all__.append('SimpleFPN')
