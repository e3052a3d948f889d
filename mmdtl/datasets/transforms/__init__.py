import importlib.util

from .loading import LoadImageFromFilePIL

__all__ = ['LoadImageFromFilePIL']

# mmseg's transforms register in mmseg's registry, so only when mmseg is
# installed; a broken mmseg install still raises.
if importlib.util.find_spec('mmseg') is not None:
    from .seg_labels import CheckSegLabels  # noqa: F401
    __all__.append('CheckSegLabels')
