from .checkpoint import (
    SAFE_GLOBAL_NAMES,
    AtomicCheckpointHook,
    UnreadableCheckpointError,
    UnsafeCheckpointError,
    load_from_local_safe,
    register_safe_globals,
    safe_torch_load,
    save_checkpoint_atomic,
)
from .memory import SavedTensorMeter, cpu_step_peak_bytes, saved_activation_bytes
from .timing import median_seconds, synchronize
from .trunk_keys import (
    TrunkMismatchError,
    TrunkNotLoadedError,
    UntrainedCheckpointError,
    check_trunk_state,
    check_trunks_loaded,
    install_trunk_check,
)

# Importing mmdtl (which imports mmdtl.utils) makes mmengine resume its own
# checkpoints with weights_only=True; see mmdtl/utils/checkpoint.py.
register_safe_globals()

__all__ = [
    'SavedTensorMeter', 'saved_activation_bytes', 'cpu_step_peak_bytes', 'SAFE_GLOBAL_NAMES',
    'AtomicCheckpointHook',
    'UnsafeCheckpointError', 'UnreadableCheckpointError', 'TrunkMismatchError',
    'TrunkNotLoadedError', 'UntrainedCheckpointError', 'check_trunk_state',
    'check_trunks_loaded', 'install_trunk_check',
    'load_from_local_safe', 'register_safe_globals', 'safe_torch_load',
    'save_checkpoint_atomic', 'median_seconds', 'synchronize'
]
