"""Trainable parameters and activation memory of DTL detectors vs full fine-tuning.

For every detection config it builds the detector twice from the same seed:
as configured (DTL: frozen trunk, side network + neck + heads trainable) and
with ``model.backbone.freeze_backbone=False`` (the whole backbone trainable,
side network included). The side network starts as an exact no-op, so both
see identical features, proposals and sampled RoIs; the two runs differ only
in what autograd keeps.

Memory options: the neck and heads run as configured in both modes (e.g.
``with_cp=True`` of SimpleFPN and mmdtl's ``Checkpoint*Head``), so they save
the same in both. The backbone options that serve a frozen trunk
(:data:`FROZEN_TRUNK_OPTIONS`: ``checkpoint_suffix``,
``recompute_prefix_taps``, ...) run on the DTL side only: full fine-tuning
gets the plain backbone (``checkpoint_suffix`` there would checkpoint every
block, another method; the others need a frozen trunk). The table lists, per
mode, the backbone options and the neck/head options that ran, read from the
built detector. For each mode it reports

- trainable parameters, of the backbone and of the whole detector;
- activation bytes: the tensors saved for backward during one real training
  step (data preprocessor, then ``model.loss``) on a synthetic batch with
  boxes and masks, storage-deduplicated, parameters excluded (as
  :func:`mmdtl.utils.saved_activation_bytes`), in all and while the
  backbone runs (the rest, neck and heads, is the same in both modes);
- the wall time of that step (forward and backward, one step: a rough
  figure of the recompute cost of checkpointing, not a benchmark);

and :func:`write_outputs` writes ``detection_memory.md`` and
``detection_memory.csv`` (through :mod:`mmdtl.utils.report`). Weights are
random (``init_cfg`` of the backbone is dropped, no checkpoint is needed):
the counts depend on the shapes, not the values.

``tools/analysis/detection_memory.py`` is the command line of this module.
"""
import copy
import gc
import os
import os.path as osp
import time
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.registry import DefaultScope, init_default_scope

from mmdtl.models.dtl import DTLOptions
from mmdtl.utils import SavedTensorMeter, synchronize
from mmdtl.utils.report import markdown_table, write_csv, write_markdown

COLUMNS = ['config', 'mode', 'backbone_options', 'neck_head_options', 'trainable_backbone',
           'trainable_total', 'total_params', 'backbone_activation_mb', 'activation_mb',
           'backbone_activation_vs_full', 'activation_vs_full', 'trainable_vs_full', 'step_s']
MODES = ('dtl', 'full')
#: DTL backbone options that serve a frozen trunk; the full fine-tuning side
#: runs without them (see the module docstring).
# Every memory/speed option of DTLOptions: they serve the frozen trunk (or
# need checkpoint_suffix, which full fine-tuning does not get).
FROZEN_TRUNK_OPTIONS = tuple(n for n in DTLOptions.names() if n not in (
    'freeze_backbone', 'allow_random_trunk', 'allow_partial_trunk'))



class ConfigError(ValueError):
    """A config this tool cannot measure (missing, not DTL, or its backbone
    outputs do not reach the neck); the message says which and why."""


def load_config(path: str, options: Optional[dict] = None) -> Config:
    """Read a DTL detection config and apply ``options``.

    Args:
        path (str): The config file.
        options (dict, optional): Overrides, as ``--cfg-options`` gives them.

    Raises:
        ConfigError: The file is missing or its backbone has no ``csn``.
    """
    if not osp.isfile(path):
        raise ConfigError(f'Config file not found: {path}')
    cfg = Config.fromfile(path)
    if options:
        cfg.merge_from_dict(options)
    backbone = cfg.get('model', {}).get('backbone')
    if backbone is None or 'csn' not in backbone:
        raise ConfigError(f'{path}: model.backbone is not a DTL backbone (no csn); '
                          'this tool compares DTL with full fine-tuning')
    return cfg


def num_classes_of(cfg_model) -> int:
    """The smallest ``num_classes`` in the model config (all labels valid)."""
    found = []

    def visit(node):
        if isinstance(node, dict):
            if isinstance(node.get('num_classes'), int):
                found.append(node['num_classes'])
            for value in node.values():
                visit(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                visit(value)

    visit(cfg_model)
    return min(found) if found else 1


def synthetic_batch(size: Tuple[int, int], batch_size: int, num_objects: int,
                    num_classes: int, seed: int) -> dict:
    """Random images with random boxes and elliptic masks inside them, as a
    data loader gives them to the data preprocessor."""
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData

    rng = np.random.default_rng(seed)
    height, width = size
    inputs, samples = [], []
    for _ in range(batch_size):
        inputs.append(torch.from_numpy(
            rng.integers(0, 256, (3, height, width), dtype=np.uint8)))
        x1 = rng.uniform(0, 0.7 * width, num_objects)
        y1 = rng.uniform(0, 0.7 * height, num_objects)
        x2 = np.minimum(x1 + rng.uniform(0.1, 0.5, num_objects) * width, width - 1)
        y2 = np.minimum(y1 + rng.uniform(0.1, 0.5, num_objects) * height, height - 1)
        boxes = np.stack([x1, y1, x2, y2], axis=1).astype(np.float32)
        yy, xx = np.mgrid[:height, :width]
        masks = np.zeros((num_objects, height, width), dtype=np.uint8)
        for k, (a, b, c, d) in enumerate(boxes):
            cx, cy, rx, ry = (a + c) / 2, (b + d) / 2, (c - a) / 2, (d - b) / 2
            masks[k] = ((xx - cx) / rx)**2 + ((yy - cy) / ry)**2 <= 1
        gt = InstanceData(
            bboxes=torch.from_numpy(boxes),
            labels=torch.from_numpy(rng.integers(0, num_classes, num_objects)),
            masks=BitmapMasks(masks, height, width))
        sample = DetDataSample(metainfo=dict(
            img_shape=(height, width), ori_shape=(height, width), scale_factor=(1., 1.),
            flip=False))
        sample.gt_instances = gt
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


class RegionMeter(SavedTensorMeter):
    """A :class:`SavedTensorMeter` that also counts, apart, what is saved
    while ``module`` runs its forward.

    Args:
        exclude: Tensors not to count (the parameters).
        module (nn.Module): The region, e.g. the backbone; its bytes are in
            ``inside`` (storage pointer -> bytes). Call :meth:`remove` after.
    """

    def __init__(self, exclude, module: torch.nn.Module):
        super().__init__(exclude)
        self.inside = {}
        self._depth = 0
        self._handles = [
            module.register_forward_pre_hook(lambda *_: self._enter()),
            module.register_forward_hook(lambda *_: self._leave())
        ]

    def _enter(self):
        self._depth += 1

    def _leave(self):
        self._depth -= 1

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        before = len(self.storages)
        tensor = super()._pack(tensor)
        if self._depth and len(self.storages) > before:  # a new activation storage
            storage = tensor.untyped_storage()
            self.inside[storage.data_ptr()] = storage.nbytes()
        return tensor

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def build_detector(cfg: Config, mode: str, seed: int, device: torch.device):
    """The detector of ``cfg`` with random weights, in training mode.

    Args:
        cfg (Config): From :func:`load_config`.
        mode (str): 'dtl' as configured; 'full' with
            ``freeze_backbone=False`` and the ``FROZEN_TRUNK_OPTIONS`` at their
            defaults (neck and heads untouched).
        seed (int): Seed of the weights.
        device (torch.device): Where it goes.
    """
    from mmdet.registry import MODELS

    model_cfg = copy.deepcopy(cfg.model)
    # No checkpoint needed: what is saved depends on shapes, not on values.
    model_cfg.backbone.init_cfg = None
    if mode == 'full':
        model_cfg.backbone.freeze_backbone = False
        defaults = DTLOptions()
        for name in FROZEN_TRUNK_OPTIONS:  # plain full fine-tuning; neck/heads untouched
            if name in model_cfg.backbone:
                model_cfg.backbone[name] = getattr(defaults, name)
    torch.manual_seed(seed)
    model = MODELS.build(model_cfg)
    model.init_weights()
    return model.to(device).train()


def backbone_options(backbone: torch.nn.Module) -> str:
    """The reported DTL options of a built backbone, e.g.
    ``'freeze_backbone=True checkpoint_suffix=True'``."""
    options = getattr(backbone, 'dtl_options', None)
    if options is None:
        return type(backbone).__name__
    shown = ['freeze_backbone'] + [n for n in FROZEN_TRUNK_OPTIONS
                                   if getattr(options, n) not in (None, False)]
    return ' '.join(f'{n}={getattr(options, n)}' for n in shown)


def neck_head_options(model: torch.nn.Module) -> str:
    """The modules outside the backbone that run with activation
    checkpointing (``with_cp=True``), e.g. ``'with_cp: neck, rpn_head'``."""
    names = []
    for name, module in model.named_modules():
        if not name or name == 'backbone' or name.startswith('backbone.'):
            continue
        if getattr(module, 'with_cp', False) is True and not any(
                name.startswith(n + '.') for n in names):
            names.append(name)
    return 'with_cp: ' + ', '.join(names) if names else 'none'


def measure(cfg: Config, mode: str, img_size: Tuple[int, int], batch_size: int = 2,
            num_objects: int = 5, device: str = 'cpu', seed: int = 0) -> dict:
    """Parameter counts and activation bytes of one training step.

    Args:
        cfg (Config): From :func:`load_config`.
        mode (str): One of ``MODES``: 'dtl' (as configured) or 'full'.
        img_size (tuple[int, int]): Height and width of the images.
        batch_size (int): Images in the step. Defaults to 2.
        num_objects (int): Boxes and masks per image. Defaults to 5.
        device (str): Where the step runs. Defaults to 'cpu'.
        seed (int): Seed of the weights, the batch and the step. Defaults to 0.

    Returns:
        dict: The ``COLUMNS`` of the row except ``config`` and the ratios
        (:func:`add_ratios`).
    """
    device = torch.device(device)
    model = build_detector(cfg, mode, seed, device)
    batch = synthetic_batch(tuple(img_size), batch_size, num_objects,
                            num_classes_of(cfg.model), seed)
    data = model.data_preprocessor(batch, training=True)

    meter = RegionMeter(model.parameters(), model.backbone)
    torch.manual_seed(seed)  # same drop path and RoI sampling in both modes
    synchronize(device)
    tic = time.perf_counter()
    with meter:
        loss, _ = model.parse_losses(model(**data, mode='loss'))
    meter.remove()
    loss.backward()  # frees the graph
    synchronize(device)
    step_s = time.perf_counter() - tic
    row = dict(
        mode=mode,
        backbone_options=backbone_options(model.backbone),
        neck_head_options=neck_head_options(model),
        trainable_backbone=sum(p.numel() for p in model.backbone.parameters()
                               if p.requires_grad),
        trainable_total=sum(p.numel() for p in model.parameters() if p.requires_grad),
        total_params=sum(p.numel() for p in model.parameters()),
        backbone_activation_mb=sum(meter.inside.values()) / 2**20,
        activation_mb=meter.bytes / 2**20,
        step_s=step_s)
    return row


def add_ratios(rows: List[dict]) -> None:
    """Add the ``*_vs_full`` columns to every row, in place.

    Args:
        rows (list[dict]): The ``dtl`` and ``full`` rows of every config.

    Raises:
        RuntimeError: The two modes of a config ran different neck/head
            options (the comparison would not be fair).
    """
    full = {r['config']: r for r in rows if r['mode'] == 'full'}
    for row in rows:  # a fair comparison: the same neck and heads on both sides
        if row['neck_head_options'] != full[row['config']]['neck_head_options']:
            raise RuntimeError(
                f'{row["config"]}: the neck/head options differ between the modes '
                f'({row["neck_head_options"]!r} vs {full[row["config"]]["neck_head_options"]!r})')
    for row in rows:
        ref = full[row['config']]
        row['backbone_activation_vs_full'] = (
            row['backbone_activation_mb'] / ref['backbone_activation_mb']
            if ref['backbone_activation_mb'] else float('nan'))
        row['activation_vs_full'] = (row['activation_mb'] / ref['activation_mb']
                                     if ref['activation_mb'] else float('nan'))
        row['trainable_vs_full'] = row['trainable_total'] / ref['trainable_total']


def fmt(value) -> str:
    """A table cell: 3 decimals (1 from 10 on) for floats, thousands
    separators for ints."""
    if isinstance(value, float):
        return f'{value:.3f}' if abs(value) < 10 else f'{value:.1f}'
    if isinstance(value, int):
        return f'{value:,}'
    return str(value)


def write_outputs(work_dir: str, rows: Sequence[dict], img_size: Sequence[int],
                  batch_size: int, num_objects: int, device: str) -> dict:
    """Write ``detection_memory.md`` and ``detection_memory.csv``.

    Args:
        work_dir (str): The folder (created).
        rows (Sequence[dict]): From :func:`run_detection_memory`.
        img_size (Sequence[int]): SIZE or HEIGHT WIDTH, named in the title.
        batch_size (int), num_objects (int), device (str): Named in the title.

    Returns:
        dict: The paths, ``md`` and ``csv``.
    """
    size = 'x'.join(map(str, list(img_size) * (3 - len(img_size))))
    lines = [
        f'# Detection: DTL vs full fine-tuning ({size} px, batch {batch_size}, '
        f'{num_objects} objects/image, {device})', '',
        'activation_mb: tensors saved for backward in one training step '
        '(parameters excluded); `full` = `model.backbone.freeze_backbone=False` without the '
        f'frozen-trunk options ({", ".join(FROZEN_TRUNK_OPTIONS)}); neck and heads as '
        'configured in both modes. step_s: that one step, forward + backward.', ''
    ]
    for row in rows:
        if row['mode'] == 'full':
            lines.append(f'- {row["config"]}: neck/head memory options (both modes): '
                         f'{row["neck_head_options"]}')
    lines += ['', markdown_table(COLUMNS, rows, fmt)]
    md = write_markdown(osp.join(work_dir, 'detection_memory.md'), '\n'.join(lines))
    csv_path = write_csv(osp.join(work_dir, 'detection_memory.csv'), COLUMNS, rows)
    return dict(md=md, csv=csv_path)


def run_detection_memory(configs: Sequence[str],
                         img_size: Sequence[int] = (512, ),
                         batch_size: int = 2,
                         num_objects: int = 5,
                         device: str = 'cpu',
                         seed: int = 0,
                         work_dir: str = 'work_dirs/detection_memory',
                         cfg_options: Optional[dict] = None) -> List[dict]:
    """Measure every config in both modes and write the tables.

    A line per config and mode is printed as it finishes; mmengine's
    per-parameter init report goes to ``work_dir/detection_memory.log``.

    Args:
        configs (Sequence[str]): DTL detection config files.
        img_size (Sequence[int]): SIZE (square) or HEIGHT WIDTH.
        batch_size (int): Images per step. Defaults to 2.
        num_objects (int): Boxes/masks per image. Defaults to 5.
        device (str): Device of the step. Defaults to 'cpu'.
        seed (int): Random seed. Defaults to 0.
        work_dir (str): Where the tables and the log go.
        cfg_options (dict, optional): Overrides applied to every config.

    Returns:
        list[dict]: Two rows (``dtl``, ``full``) per config, with ratios.

    Raises:
        ConfigError: A config is missing, not DTL, or its backbone outputs do
            not fit its neck (checked before its step).
    """
    import mmdet.models  # noqa: F401  (registers mmdet's modules)

    import mmdtl  # noqa: F401  (DTL backbones, SimpleFPN)
    from mmdtl.utils.config_checks import check_backbone_reaches_neck
    size = tuple(img_size) if len(img_size) == 2 else (img_size[0], ) * 2
    os.makedirs(work_dir, exist_ok=True)
    # The (long) per-parameter init report goes to this log file, not the terminal.
    MMLogger.get_instance(
        f'detection_memory_{time.time_ns()}',
        log_file=osp.join(work_dir, 'detection_memory.log'), log_level='WARNING')
    rows = []
    for path in configs:
        cfg = load_config(path, cfg_options)
        try:  # a clear error before the step when out_indices do not reach the neck
            check_backbone_reaches_neck(cfg)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        scope = cfg.get('default_scope', 'mmdet')
        init_default_scope(scope)
        name = osp.splitext(osp.basename(path))[0]
        for mode in MODES:
            tic = time.perf_counter()
            with DefaultScope.overwrite_default_scope(scope):
                row = dict(config=name, **measure(cfg, mode, size, batch_size, num_objects,
                                                  device, seed))
            gc.collect()  # one detector at a time
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            rows.append(row)
            print(f'{name} [{mode}]: trainable {row["trainable_total"]:,} '
                  f'(backbone {row["trainable_backbone"]:,}), activations '
                  f'{row["activation_mb"]:.1f} MB; backbone: {row["backbone_options"]}; '
                  f'neck/heads: {row["neck_head_options"]} ({time.perf_counter() - tic:.0f} s)',
                  flush=True)
    add_ratios(rows)
    write_outputs(work_dir, rows, img_size, batch_size, num_objects, device)
    return rows
