from .hooks import TaskCheckpointHook
from .launch import (
                     CHECKPOINT_ERRORS,
                     TRAIN_ERRORS,
                     LaunchError,
                     LogBatchAndLrHook,
                     finish_distributed,
                     load_config,
                     setup_amp,
                     setup_batch,
)
from .prefix_cache_hook import PrefixCacheHook, random_transforms
from .schedulers import TimmCosineLR, timm_cosine_lr
from .task_checkpoint import (
                              BackboneMismatchError,
                              backbone_fingerprint,
                              load_backbone_weights,
                              load_task_checkpoint,
                              read_task_file,
                              save_task_checkpoint,
)

__all__ = [
    'PrefixCacheHook', 'random_transforms', 'TimmCosineLR', 'timm_cosine_lr',
    'TaskCheckpointHook', 'BackboneMismatchError', 'backbone_fingerprint',
    'load_backbone_weights', 'load_task_checkpoint', 'read_task_file', 'save_task_checkpoint',
    'LaunchError', 'CHECKPOINT_ERRORS', 'TRAIN_ERRORS', 'LogBatchAndLrHook', 'load_config',
    'setup_batch', 'setup_amp', 'finish_distributed'
]
