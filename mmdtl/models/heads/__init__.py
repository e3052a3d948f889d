"""mmdet heads with memory options for DTL detectors.

They are registered in mmdet's registry, so they need mmdet; mmdtl itself
(classification) keeps working without it.
"""
import importlib.util

__all__ = []

# Import only when mmdet is installed; a broken mmdet install still raises.
if importlib.util.find_spec('mmdet') is not None:
    from .checkpointed import (  # noqa: F401
        CheckpointFCNMaskHead,
        CheckpointRPNHead,
        CheckpointShared4Conv1FCBBoxHead,
    )
    __all__ += ['CheckpointRPNHead', 'CheckpointShared4Conv1FCBBoxHead', 'CheckpointFCNMaskHead']
