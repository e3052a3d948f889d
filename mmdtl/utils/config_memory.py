"""The memory of one training step of a classification config, without its
data or weights: the model and optimizer the config builds, one batch of
random images of the backbone's input size, fp32.

``tools/run_suite.py ablation-*`` uses it for the memory columns of its
table: on real tensors for small models (exact, the profiler's count) and on
fake tensors for large ones (nothing computed; see
:func:`mmdtl.utils.memory.fake_tensors`).
"""
import contextlib
import logging
from typing import Dict

import torch

MB = 2**20


def _input_shape(backbone_cfg) -> tuple:
    """``(channels, height, width)`` of the backbone's input."""
    size = backbone_cfg.get('img_size', 224)
    if isinstance(size, int):
        size = (size, size)
    return (backbone_cfg.get('in_channels', 3), *size)


@contextlib.contextmanager
def quiet_logger():
    """Only errors from mmengine's current logger meanwhile (building a
    model logs one line per parameter that ``init_weights`` left alone)."""
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def config_step_memory(cfg, fake: bool = False, batch_size: int = None) -> Dict[str, float]:
    """Trainable parameters and memory of one training step of ``cfg``.

    The step is the model's ``train_step`` with the config's optimizer in
    fp32 (an AMP optim wrapper is replaced by the plain one: the numbers of
    a CPU run), after one step that creates the optimizer state.

    Args:
        cfg (Config): A classification config (``model``, ``optim_wrapper``,
            ``train_dataloader.batch_size``).
        fake (bool): Count on fake tensors (an estimate; any size) instead of
            running the step on CPU (the profiler's measurement).
        batch_size (int, optional): Defaults to the config's per-process
            train batch size.

    Returns:
        dict: ``trainable`` (backbone parameters that train),
        ``activations_mb`` (saved for backward, parameters excluded) and
        ``step_peak_mb`` (live tensors at the step's peak, weights, gradients
        and optimizer state included).
    """
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS
    from mmpretrain.structures import DataSample

    from .memory import (
        cpu_step_peak_bytes,
        fake_tensors,
        saved_activation_bytes,
        tracked_step_peak_bytes,
        training_state,
    )

    init_default_scope(cfg.get('default_scope', 'mmpretrain'))
    batch_size = batch_size or cfg.train_dataloader.batch_size
    optim_cfg = cfg.optim_wrapper.copy()
    if optim_cfg.get('type', 'OptimWrapper') != 'OptimWrapper':
        optim_cfg['type'] = 'OptimWrapper'
        optim_cfg.pop('dtype', None)
        optim_cfg.pop('loss_scale', None)
    num_classes = cfg.model.head.num_classes
    with fake_tensors() if fake else contextlib.nullcontext():
        torch.manual_seed(0)
        model = MODELS.build(cfg.model).train()
        trainable = sum(p.numel() for p in model.backbone.parameters() if p.requires_grad)
        channels, height, width = _input_shape(cfg.model.backbone)
        images = torch.randint(0, 256, (batch_size, channels, height, width), dtype=torch.uint8)
        # Python ints: a label tensor would need a value under fake tensors
        data = dict(inputs=images,  # a batch tensor: no padding check on values
                    data_samples=[DataSample().set_gt_label(i % num_classes)
                                  for i in range(batch_size)])
        with quiet_logger():  # one line per frozen parameter otherwise
            optim_wrapper = build_optim_wrapper(model, optim_cfg)
        processed = model.data_preprocessor(data, True)

        def loss_fn():
            loss, _ = model.parse_losses(model(**processed, mode='loss'))
            return loss

        activations = saved_activation_bytes(model, loss_fn)
        model.train_step(data, optim_wrapper)  # the optimizer state exists, as in every later step
        optim_wrapper.zero_grad()
        live = training_state(model, optim_wrapper.optimizer) + [images]
        step = lambda: model.train_step(data, optim_wrapper)  # noqa: E731
        peak = (tracked_step_peak_bytes(step, live) if fake else cpu_step_peak_bytes(step, live))
    return dict(trainable=trainable, activations_mb=activations / MB, step_peak_mb=peak / MB)
