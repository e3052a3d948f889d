from . import heads, necks  # noqa: F401  (mmdet heads and SimpleFPN, if mmdet is installed)
from .backbones import *  # noqa: F401,F403
from .frozen_linear import FrozenLinearPacks, packing_available
from .multitask import MultiTaskDTL, MultiTaskInferencer
from .side_network import CompactSideNetwork, build_side_network, swish

__all__ = [
    'CompactSideNetwork', 'build_side_network', 'swish', 'MultiTaskDTL', 'MultiTaskInferencer',
    'FrozenLinearPacks', 'packing_available'
]
