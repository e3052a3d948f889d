import importlib.util

from .loading import LoadImageFromFile, LoadImageFromFilePIL, ToGrayscale, register_loader

__all__ = ['LoadImageFromFile', 'LoadImageFromFilePIL', 'ToGrayscale']

# mmcv's loader with errors naming the file, under its own name, in the
# dense-prediction scopes too (their registries would fall back to mmcv's).
for _scope in ('mmdet', 'mmseg'):
    if importlib.util.find_spec(_scope) is not None:
        _registry = importlib.import_module(f'{_scope}.registry').TRANSFORMS
        _registry.import_from_location()  # their own transforms first
        register_loader(_registry)

# mmseg's transforms register in mmseg's registry, so only when mmseg is
# installed; a broken mmseg install still raises.
if importlib.util.find_spec('mmseg') is not None:
    from .seg_labels import CheckSegLabels  # noqa: F401
    __all__.append('CheckSegLabels')
