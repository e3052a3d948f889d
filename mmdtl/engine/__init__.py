from .hooks import TaskCheckpointHook
from .task_checkpoint import (
                              BackboneMismatchError,
                              backbone_fingerprint,
                              load_backbone_weights,
                              load_task_checkpoint,
                              read_task_file,
                              save_task_checkpoint,
)

__all__ = [
    'TaskCheckpointHook', 'BackboneMismatchError', 'backbone_fingerprint',
    'load_backbone_weights', 'load_task_checkpoint', 'read_task_file', 'save_task_checkpoint'
]
