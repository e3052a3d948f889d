"""One execution engine for every DTL backbone: trunk adapters, the runner,
one options object (see ``docs/adding_a_backbone.md``)."""
from .adapter import TrunkAdapter, ViTFamilyAdapter
from .backbone import DTLBackbone
from .options import (
    HALF_SUFFIX,
    INCOMPATIBLE,
    PRESETS,
    REQUIRES,
    DTLOptions,
    preset_names,
    preset_options,
)
from .runner import DTLRunner

__all__ = [
    'TrunkAdapter', 'ViTFamilyAdapter', 'DTLBackbone', 'DTLOptions', 'DTLRunner',
    'HALF_SUFFIX', 'INCOMPATIBLE', 'REQUIRES', 'PRESETS', 'preset_names', 'preset_options'
]
