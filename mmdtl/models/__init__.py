from .backbones import *  # noqa: F401,F403
from .side_network import CompactSideNetwork, build_side_network, swish

__all__ = ['CompactSideNetwork', 'build_side_network', 'swish']
