"""One frozen backbone, many DTL tasks: compute the shared prefix once.

DTL never changes the backbone, and blocks ``0..M`` of a task with
``csn.start = M`` see no task-specific input: their inputs and outputs are
those of the plain frozen backbone. :class:`MultiTaskDTL` therefore runs the
backbone's stream (the *trunk*; any DTL backbone) once up to the largest
``M`` of its tasks; every task reads its taps from the trunk while its ``M`` is not
reached, branches off after its block ``M`` (adding its side output) and
runs only the remaining blocks on its own stream. Streams that pass through
the same frozen block are concatenated along the batch and run as one call.
"""
import copy
import os
import os.path as osp
from collections.abc import Mapping
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.model import BaseModel
from mmpretrain.registry import MODELS

from mmdtl.engine.task_checkpoint import (
    backbone_fingerprint,
    check_fingerprint,
    load_backbone_weights,
    read_task_file,
)

from .dtl import DTLBackbone
from .frozen_linear import packed_linears
from .side_network import build_side_network

IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif', '.tiff', '.webp')
# Loading transforms of a test pipeline (the inferencer reads paths with them).
_LOADING_TRANSFORMS = ('LoadImageFromFile', 'LoadImageFromFilePIL')
# Backbone settings that change the output without changing tensor shapes.
_OUTPUT_KEYS = ('out_type', 'final_norm', 'with_cls_token', 'out_after_downsample')


def _load_config(config: Union[str, dict, Config]) -> Config:
    if isinstance(config, Config):
        return config
    if isinstance(config, (str, os.PathLike)):
        return Config.fromfile(str(config))
    return Config(copy.deepcopy(dict(config)))


def _backbone_cfg(backbone: Union[str, dict, Config]) -> dict:
    """A backbone config from a config dict or a full model config (file)."""
    cfg = _load_config(backbone)
    if 'model' in cfg:
        cfg = cfg.model
    if 'backbone' in cfg:
        cfg = cfg.backbone
    if 'type' not in cfg:
        raise ValueError(f'No backbone config found in {backbone!r}; pass a DTL backbone '
                         f'config dict (DTLViT, DTLSwin, ...) or a config file with '
                         f'`model.backbone`.')
    return cfg.to_dict() if hasattr(cfg, 'to_dict') else dict(cfg)


def _task_name(content: dict, path: str) -> str:
    name = (content.get('meta') or {}).get('task_name')
    if name:
        return str(name)
    stem = osp.splitext(osp.basename(path))[0]
    if stem == 'task_final' or stem.startswith(('task_epoch_', 'task_iter_')):
        # Files written by TaskCheckpointHook: the work dir names the task.
        return osp.basename(osp.dirname(osp.abspath(path))) or stem
    return stem


@MODELS.register_module()
class MultiTaskDTL(BaseModel):
    """Run K DTL tasks that share one frozen backbone, prefix computed once.

    Every task comes from a task file (see :func:`save_task_checkpoint`)
    with its own side network (its own ``M``, taps, rank and kernel), head
    and class names. The output equals running each task's own single DTL
    classifier, at the cost of the blocks up to the largest ``M`` once plus
    each task's remaining blocks.

    Args:
        backbone (dict | str | Config): Config of the shared DTL backbone
            (``DTLViT``, ``DTLSwin``, ``DTLConvNeXt``, ...), or a config file
            / config whose ``model.backbone`` is used. Its own
            ``csn`` is built but not used.
        tasks (Sequence[str] | Mapping[str, str]): Task files, or task name
            -> task file. Names default to the file's ``meta['task_name']``,
            else its stem (for ``task_final.pth`` etc. its folder name).
        backbone_checkpoint (str, optional): Frozen backbone weights
            (converted backbone or full training checkpoint). Defaults to the
            backbone config's ``Pretrained`` init_cfg, else the checkpoint
            recorded in the first task file. Every task's fingerprint must
            match the loaded backbone.
        batch_tasks (bool): Concatenate the streams that run through the
            same block along the batch. Defaults to True.
        data_preprocessor (dict, optional): Defaults to
            ``dict(type='mmpretrain.ClsDataPreprocessor')``.
        init_cfg (dict, optional): Unused; the weights come from the files.
    """

    def __init__(self,
                 backbone: Union[dict, str, Config],
                 tasks: Union[Sequence[str], Mapping],
                 backbone_checkpoint: Optional[str] = None,
                 batch_tasks: bool = True,
                 data_preprocessor: Optional[dict] = None,
                 init_cfg: Optional[dict] = None):
        data_preprocessor = dict(data_preprocessor or {})
        data_preprocessor.setdefault('type', 'mmpretrain.ClsDataPreprocessor')
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.batch_tasks = batch_tasks

        if isinstance(tasks, (str, os.PathLike)):
            tasks = [tasks]
        if isinstance(tasks, Mapping):
            items = [(str(k), str(v)) for k, v in tasks.items()]
            contents = [read_task_file(path) for _, path in items]
        else:
            paths = [str(p) for p in tasks]
            contents = [read_task_file(path) for path in paths]
            items = [(_task_name(c, p), p) for c, p in zip(contents, paths)]
        if not items:
            raise ValueError('MultiTaskDTL needs at least one task file.')
        names = [name for name, _ in items]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f'Task names {duplicates} are not unique; pass `tasks` as a dict '
                             f'name -> file.')

        cfg = _backbone_cfg(backbone)
        pretrained = cfg.pop('init_cfg', None)
        if backbone_checkpoint is None and isinstance(pretrained, Mapping) \
                and pretrained.get('type') == 'Pretrained':
            backbone_checkpoint = pretrained.get('checkpoint')
        if backbone_checkpoint is None:
            backbone_checkpoint = contents[0].get('backbone_checkpoint')
        self.backbone = MODELS.build(cfg)
        if not isinstance(self.backbone, DTLBackbone):
            raise TypeError(f'MultiTaskDTL needs a DTL backbone (DTLViT, DTLSwin, ...), got '
                            f'{type(self.backbone).__name__}.')
        if backbone_checkpoint:
            load_backbone_weights(self.backbone, backbone_checkpoint)
        self.backbone_checkpoint = backbone_checkpoint
        self.backbone_sha256 = backbone_fingerprint(self.backbone)

        self.task_names: List[str] = names
        self.task_files: Dict[str, str] = dict(items)
        self.class_names: Dict[str, Optional[List[str]]] = {}
        # Module keys are indices: task names may contain dots.
        self.csns, self.heads, self.necks = nn.ModuleDict(), nn.ModuleDict(), nn.ModuleDict()
        for index, ((name, path), content) in enumerate(zip(items, contents)):
            self._add_task(str(index), name, path, content)
        self.requires_grad_(False)
        self.eval()

    def _add_task(self, key: str, name: str, path: str, content: dict) -> None:
        if self.backbone_checkpoint is None:
            hint = (' (no backbone checkpoint was given, so the backbone is randomly '
                    'initialised)')
        else:
            hint = ''
        try:
            check_fingerprint(content, self.backbone_sha256, path)
        except ValueError as e:
            raise type(e)(f'{e}{hint}') from None
        saved_cfg = content.get('backbone_cfg') or {}
        for option in _OUTPUT_KEYS:
            if option in saved_cfg and hasattr(self.backbone, option) \
                    and saved_cfg[option] != getattr(self.backbone, option):
                raise ValueError(f'Task file {path} was trained with backbone {option}='
                                 f'{saved_cfg[option]!r}, the shared backbone has '
                                 f'{getattr(self.backbone, option)!r}.')
        defaults = self.backbone.csn_defaults()
        csn = build_side_network(dict(content['csn_cfg']), **defaults)
        if csn.num_layers != defaults['num_layers']:
            raise ValueError(f'Task file {path} has a side network for {csn.num_layers} '
                             f'blocks, the backbone has {defaults["num_layers"]}.')
        csn.load_state_dict(content['csn_state'])
        self.csns[key] = csn
        if content.get('head_state') is not None:
            head = MODELS.build(dict(content['head_cfg']))
            head.load_state_dict(content['head_state'])
            self.heads[key] = head
        if content.get('neck_cfg') is not None:
            neck = MODELS.build(dict(content['neck_cfg']))
            neck.load_state_dict(content.get('neck_state') or {})
            self.necks[key] = neck
        self.class_names[name] = content.get('class_names')

    def train(self, mode: bool = True) -> 'MultiTaskDTL':
        """Inference only: dropout and drop-path stay off."""
        return super().train(False)

    @property
    def starts(self) -> Dict[str, int]:
        """``M`` of every task."""
        return {n: self.csns[str(i)].start for i, n in enumerate(self.task_names)}

    def forward(self,
                inputs: torch.Tensor,
                data_samples: Optional[list] = None,
                mode: str = 'tensor') -> Dict[str, torch.Tensor]:
        """Per-task outputs of a batch of images.

        Args:
            inputs (Tensor): Normalised images, shape (B, 3, H, W).
            data_samples: Unused.
            mode (str): ``'tensor'`` returns task name -> logits (features
                for a task without head); ``'predict'`` returns task name ->
                softmax scores.

        Returns:
            dict[str, Tensor]: One (B, num_classes) tensor per task.
        """
        if mode not in ('tensor', 'predict'):
            raise ValueError(f'MultiTaskDTL is inference only: mode must be "tensor" or '
                             f'"predict", got {mode!r}; train each task on its own.')
        feats = self.extract_feat(inputs)
        outputs = {}
        for index, name in enumerate(self.task_names):
            key, feat = str(index), feats[name]
            if key in self.necks:
                feat = self.necks[key](feat)
            outputs[name] = self.heads[key](feat) if key in self.heads else feat[-1]
        if mode == 'predict':
            outputs = {name: logits.softmax(dim=-1) for name, logits in outputs.items()}
        return outputs

    def extract_feat(self, inputs: torch.Tensor) -> Dict[str, Tuple[torch.Tensor, ...]]:
        """Backbone outputs of every task, as the task's own backbone's
        ``forward`` would give.

        The shared stream (the *trunk*) runs while some task has not reached
        its ``M``; a task reads its taps from the trunk until then, branches
        off with its side output after block ``M`` and runs its own stream
        afterwards. Streams that pass the same block run as one batch; what
        follows a block (outputs, stage transitions) runs on every live
        stream, and outputs of tasks that have not branched are the trunk's,
        computed once.

        Returns:
            dict[str, tuple[Tensor]]: Task name -> the backbone's output tuple
            (one entry per ``out_indices``).
        """
        runner = self.backbone.dtl_runner
        trunk_adapter = self.backbone.dtl_trunk
        csns = [self.csns[str(i)] for i in range(len(self.task_names))]
        starts = [csn.start for csn in csns]
        trunk_end = max(starts)
        with packed_linears(self.backbone.frozen_linear_packs, inputs):
            trunk, grid = trunk_adapter.embed(inputs)
            sums: List[Optional[torch.Tensor]] = [None] * len(csns)
            streams: Dict[int, torch.Tensor] = {}  # tasks that have branched off
            outs: List[list] = [[] for _ in csns]
            for index, block in enumerate(trunk_adapter.blocks()):
                on_trunk = index <= trunk_end
                branched = sorted(streams)
                for t, csn in enumerate(csns):
                    # Up to its M, a task's block inputs are the trunk's.
                    stream = streams[t] if t in streams else trunk
                    sums[t] = csn.tap(index, trunk_adapter.tokens(stream, grid), sums[t])
                inputs_i = ([trunk] if on_trunk else []) + [streams[t] for t in branched]
                outputs_i = self._run_streams(
                    lambda x: trunk_adapter.call_block(index, block, x, grid), inputs_i)
                if on_trunk:
                    trunk = outputs_i.pop(0)
                for t, x in zip(branched, outputs_i):
                    streams[t] = runner.add_side(csns[t], index, x, sums[t], grid)
                for t, start in enumerate(starts):
                    if start == index:
                        streams[t] = runner.add_side(csns[t], index, trunk, sums[t], grid)
                next_grid = grid
                for t in sorted(streams):
                    streams[t], next_grid, task_outs = trunk_adapter.after_block(
                        index, streams[t], grid)
                    outs[t].extend(task_outs)
                if index < trunk_end:  # the trunk still serves a task
                    trunk, next_grid, shared_outs = trunk_adapter.after_block(index, trunk, grid)
                    for t, start in enumerate(starts):
                        if start > index:
                            outs[t].extend(shared_outs)
                grid = next_grid
        return {name: tuple(outs[t]) for t, name in enumerate(self.task_names)}

    def _run_streams(self, fn: Callable[[torch.Tensor], torch.Tensor],
                     streams: List[torch.Tensor]) -> List[torch.Tensor]:
        """``fn`` on every stream; the same frozen weights serve all of them,
        so with ``batch_tasks`` they go through as one concatenated batch."""
        if self.batch_tasks and len(streams) > 1:
            return list(fn(torch.cat(streams)).split([len(x) for x in streams]))
        return [fn(x) for x in streams]


class MultiTaskInferencer:
    """Classify images with several DTL tasks on one frozen backbone.

    Preprocessing follows the backbone config: its test pipeline (paths are
    decoded by the config's loading transform, e.g. ``LoadImageFromFilePIL``;
    arrays are taken as BGR as in mmpretrain) and its data preprocessor
    (mean/std, to_rgb).

    Example:
        >>> inferencer = MultiTaskInferencer(
        ...     'configs/dtl/vit-b_vtab-cifar.py', 'vit-b16_in21k.pth',
        ...     ['work_dirs/cifar/task_final.pth', 'work_dirs/dtd/task_final.pth'])
        >>> inferencer('demo/', topk=3)
        [{'cifar': [('cat', 0.91), ...], 'dtd': [('banded', 0.40), ...]}, ...]

    Args:
        backbone_config (str | dict | Config): Config file (or config) with
            ``model.backbone`` and a test pipeline.
        backbone_checkpoint (str, optional): Frozen backbone weights, see
            :class:`MultiTaskDTL`.
        task_files (Sequence[str] | Mapping[str, str]): Task files, or task
            name -> task file.
        device (str): Device to run on. Defaults to ``'cpu'``.
        batch_size (int): Images per forward. Defaults to 8.
    """

    def __init__(self,
                 backbone_config: Union[str, dict, Config],
                 backbone_checkpoint: Optional[str] = None,
                 task_files: Union[Sequence[str], Mapping] = (),
                 device: str = 'cpu',
                 batch_size: int = 8):
        from mmengine.dataset import Compose
        from mmengine.registry import init_default_scope
        from mmpretrain.datasets import remove_transform
        from mmpretrain.registry import TRANSFORMS

        cfg = _load_config(backbone_config)
        init_default_scope(cfg.get('default_scope', 'mmpretrain'))
        preprocessor = (cfg.get('model', {}).get('data_preprocessor')
                        or cfg.get('data_preprocessor') or {})
        self.model = MultiTaskDTL(
            backbone=cfg, tasks=task_files, backbone_checkpoint=backbone_checkpoint,
            data_preprocessor=copy.deepcopy(dict(preprocessor))).to(device)
        self.device = device
        self.batch_size = batch_size

        pipeline = None
        for key in ('test_dataloader', 'val_dataloader'):
            pipeline = cfg.get(key, {}).get('dataset', {}).get('pipeline')
            if pipeline:
                break
        pipeline = pipeline or cfg.get('test_pipeline')
        if not pipeline:
            raise ValueError('The backbone config has no test pipeline '
                             '(test_dataloader.dataset.pipeline or test_pipeline).')
        # Paths are decoded by the config's own loading transform (the recipe
        # configs' LoadImageFromFilePIL decodes as the release does), arrays are
        # taken as they are; the rest of the pipeline runs on both.
        self.loader = None
        for loader in (t for t in pipeline if t['type'] in _LOADING_TRANSFORMS):
            self.loader = TRANSFORMS.build(loader)
            pipeline = remove_transform(pipeline, loader['type'])
        self.pipeline = Compose([TRANSFORMS.build(t) for t in pipeline])

    @property
    def task_names(self) -> List[str]:
        return list(self.model.task_names)

    @staticmethod
    def list_images(images) -> list:
        """Expand the input into a list of image paths / arrays (a folder
        gives its image files, sorted)."""
        if isinstance(images, (str, os.PathLike)):
            images = str(images)
            if osp.isdir(images):
                files = sorted(f for f in os.listdir(images)
                               if f.lower().endswith(IMG_EXTENSIONS))
                if not files:
                    raise ValueError(f'No images ({", ".join(IMG_EXTENSIONS)}) in {images}.')
                return [osp.join(images, f) for f in files]
            return [images]
        if isinstance(images, np.ndarray):
            return [images]
        result = []
        for item in images:
            result.extend(MultiTaskInferencer.list_images(item))
        return result

    def _load(self, image) -> dict:
        from mmcv.image import imread
        if isinstance(image, str) and self.loader is not None:
            return self.loader(dict(img_path=image))
        img = imread(image) if isinstance(image, str) else image
        if img is None:
            raise ValueError(f'Failed to read image {image}.')
        return dict(img=img, img_shape=img.shape[:2], ori_shape=img.shape[:2])

    @torch.no_grad()
    def predict_scores(self, images) -> Dict[str, torch.Tensor]:
        """Softmax scores of every task for ``images`` (see ``__call__``).

        Returns:
            dict[str, Tensor]: Task name -> (num_images, num_classes) scores.
        """
        from mmengine.dataset import default_collate
        images = self.list_images(images)
        chunks: Dict[str, list] = {name: [] for name in self.model.task_names}
        for begin in range(0, len(images), self.batch_size):
            data = [self.pipeline(self._load(img))
                    for img in images[begin:begin + self.batch_size]]
            data = self.model.data_preprocessor(default_collate(data), False)
            for name, scores in self.model(data['inputs'], mode='predict').items():
                chunks[name].append(scores.cpu())
        return {name: torch.cat(parts) for name, parts in chunks.items()}

    def __call__(self, images, topk: int = 5) -> List[Dict[str, List[Tuple[str, float]]]]:
        """Top-k classes of every task for every image.

        Args:
            images (str | ndarray | Sequence): Image path(s), BGR array(s), or
                a folder of images.
            topk (int): Classes per task and image. Defaults to 5.

        Returns:
            list[dict]: Per image, task name -> ``[(class_name, score), ...]``
            in decreasing score.
        """
        scores = self.predict_scores(images)
        results: List[Dict[str, List[Tuple[str, float]]]] = []
        for name, task_scores in scores.items():
            names = self.model.class_names.get(name)
            k = min(topk, task_scores.shape[1])
            values, indices = task_scores.topk(k, dim=1)
            for row, (vals, idxs) in enumerate(zip(values.tolist(), indices.tolist())):
                if row == len(results):
                    results.append({})
                results[row][name] = [(names[j] if names else str(j), v)
                                      for v, j in zip(vals, idxs)]
        return results
