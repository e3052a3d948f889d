# Runtime shared by every mmdtl config (mmpretrain defaults + mmdtl import).
default_scope = 'mmpretrain'
custom_imports = dict(imports=['mmdtl'], allow_failed_imports=False)

default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=50),
    param_scheduler=dict(type='ParamSchedulerHook'),
    # Atomic writes: a kill mid-save never loses the previous checkpoint.
    checkpoint=dict(type='AtomicCheckpointHook', interval=10, max_keep_ckpts=2),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='VisualizationHook', enable=False),
    # Refuse training a frozen trunk no checkpoint was loaded into.
    trunk_check=dict(type='TrunkCheckHook'),
    # Stop at the first NaN/inf loss, before a checkpoint of it is written;
    # stop=False trains on as mmengine does.
    nonfinite_loss=dict(type='NonFiniteLossHook', stop=True),
)

env_cfg = dict(
    cudnn_benchmark=True,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),
)

vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='UniversalVisualizer', vis_backends=vis_backends)

log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=42, deterministic=False)
