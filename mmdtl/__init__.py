"""mmdtl: Disentangled Transfer Learning (DTL) for OpenMMLab.

Importing mmdtl registers its models, datasets and hooks into mmpretrain's
registries (configs say ``custom_imports=dict(imports=['mmdtl'])``). It also
replaces mmpretrain's relative-position-table resize, which needs SciPy's
removed ``interp2d``, by an equal torch one (see
:mod:`mmdtl.models.utils.rel_pos_resize`), so Swin checkpoints load into
another window size (e.g. window 12 at 384 px from window 7).

The versions of torch, mmengine, mmcv and mmpretrain are checked first
(:mod:`mmdtl.requirements`): one line names what does not fit.
"""
from .requirements import check_requirements

check_requirements()

from . import datasets, engine, evaluation, models, utils  # noqa: E402,F401  (register modules)
from .models.utils import patch_mmpretrain_rel_pos_resize  # noqa: E402

patch_mmpretrain_rel_pos_resize()

__version__ = '0.1.0'
