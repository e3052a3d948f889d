"""mmdtl: Disentangled Transfer Learning (DTL) for OpenMMLab.

Importing mmdtl registers its models, datasets and hooks into mmpretrain's
registries (configs say ``custom_imports=dict(imports=['mmdtl'])``).
"""
from . import datasets, engine, evaluation, models, utils  # noqa: F401  (register modules)

__version__ = '0.1.0'
