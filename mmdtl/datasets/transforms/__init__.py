from .loading import LoadImageFromFilePIL

__all__ = ['LoadImageFromFilePIL']
