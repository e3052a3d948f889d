"""DTL backbones in mmdet: every config under configs/mmdet/ trains and evaluates.

A tiny COCO-format dataset is generated here; each config is shrunk through
config overrides only (tiny backbone arch, narrow neck and heads, 64-96 px
images, one epoch of two iterations) and runs on CPU with mmcv's compiled ops
(RoIAlign, NMS) and CocoMetric (bbox, segm).
"""
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope, init_default_scope

pytest.importorskip('mmdet')
import mmdet.models  # noqa: F401,E402  (registers mmdet's modules)

import mmdtl  # noqa: F401,E402

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / 'configs' / 'mmdet').glob('*.py'))
SUBPROCESS_CONFIG = REPO / 'configs/mmdet/mask-rcnn_dtl+-swin-t-p4-w7_fpn_1x_coco.py'


def coco_categories() -> list:
    """All 80 COCO names (ids 1-80), so the configs' 80-class heads and
    mmdet's CocoDataset metainfo apply unchanged; objects use 1 and 3."""
    from mmdet.datasets import CocoDataset
    return [dict(id=i, name=name) for i, name in enumerate(CocoDataset.METAINFO['classes'], 1)]


# ----------------------------------------------------------------- tiny data
@pytest.fixture(scope='module')
def coco_root(tmp_path_factory):
    """Four images (64x64 and 64x80) with a rectangle and a triangle each,
    boxes and polygon masks in a real instances json."""
    root = tmp_path_factory.mktemp('coco')
    (root / 'images').mkdir()
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for image_id in range(1, 5):
        height, width = 64, 64 if image_id % 2 else 80
        img = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
        x, y = int(rng.integers(4, 20)), int(rng.integers(4, 20))
        polygons = [  # person (1), car (3)
            (1, np.array([[x, y], [x + 24, y], [x + 24, y + 20], [x, y + 20]])),
            (3, np.array([[width - 30, 60], [width - 4, 60], [width - 17, 36]])),
        ]
        for category, poly in polygons:
            cv2.fillPoly(img, [poly.astype(np.int32)], (200, 80 * category % 255, 40))
            x0, y0 = poly.min(axis=0)
            x1, y1 = poly.max(axis=0)
            annotations.append(dict(
                id=len(annotations) + 1, image_id=image_id, category_id=category,
                bbox=[float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                area=float(cv2.contourArea(poly.astype(np.float32))),
                segmentation=[poly.astype(float).ravel().tolist()], iscrowd=0))
        name = f'{image_id:04d}.jpg'
        cv2.imwrite(str(root / 'images' / name), img)
        images.append(dict(id=image_id, file_name=name, height=height, width=width))
    ann = root / 'instances.json'
    ann.write_text(json.dumps(dict(images=images, annotations=annotations,
                                   categories=coco_categories())))
    return root


# ------------------------------------------------------------ tiny overrides
def is_swin(cfg) -> bool:
    return 'Swin' in cfg.model.backbone.type


def backbone_options(cfg) -> dict:
    """A tiny backbone arch with a side network that fits it."""
    if is_swin(cfg):
        dims = [16 * 2**i for i in cfg.model.backbone.out_indices]
        return {
            'model.backbone.arch._delete_': True,
            'model.backbone.arch.embed_dims': 16,
            'model.backbone.arch.depths': [2, 2, 2, 2],
            'model.backbone.arch.num_heads': [1, 1, 2, 2],
            'model.backbone.window_size': 4,
            'model.backbone.csn.taps': [4, 5, 6, 7],  # stages 2-3
            'model.backbone.csn.start': 5,
            'model.neck.in_channels': dims,
            'model.neck.out_channels': 32,
        }
    return {
        'model.backbone.arch._delete_': True,
        'model.backbone.arch.embed_dims': 32,
        'model.backbone.arch.num_layers': 4,
        'model.backbone.arch.num_heads': 2,
        'model.backbone.arch.feedforward_channels': 64,
        'model.backbone.img_size': 64,
        'model.backbone.csn.taps': [0, 1, 2, 3],
        'model.backbone.csn.start': 2,
        'model.neck.backbone_channel': 32,
        'model.neck.in_channels': [8, 16, 32, 32],
        'model.neck.out_channels': 32,
    }


def head_options(cfg) -> dict:
    """Narrow heads, few proposals/RoIs, every detection kept (score_thr 0) so
    an untrained model still gives COCO evaluation something to score."""
    if cfg.model.type == 'RetinaNet':
        return {
            'model.bbox_head.in_channels': 32,
            'model.bbox_head.feat_channels': 32,
            'model.bbox_head.stacked_convs': 1,
            'model.test_cfg.nms_pre': 100,
            'model.test_cfg.score_thr': 0.0,
            'model.test_cfg.max_per_img': 20,
        }
    opts = {
        'model.rpn_head.in_channels': 32,
        'model.rpn_head.feat_channels': 32,
        'model.roi_head.bbox_roi_extractor.out_channels': 32,
        'model.roi_head.bbox_head.in_channels': 32,
        'model.roi_head.bbox_head.fc_out_channels': 64,
        'model.roi_head.mask_roi_extractor.out_channels': 32,
        'model.roi_head.mask_head.in_channels': 32,
        'model.roi_head.mask_head.conv_out_channels': 32,
        'model.roi_head.mask_head.num_convs': 1,
        'model.train_cfg.rpn_proposal.nms_pre': 200,
        'model.train_cfg.rpn_proposal.max_per_img': 100,
        'model.train_cfg.rcnn.sampler.num': 32,
        'model.test_cfg.rpn.nms_pre': 200,
        'model.test_cfg.rpn.max_per_img': 50,
        'model.test_cfg.rcnn.score_thr': 0.0,
        'model.test_cfg.rcnn.max_per_img': 20,
    }
    if 'conv_out_channels' in cfg.model.roi_head.bbox_head:  # ViTDet's 4conv1fc head
        opts['model.roi_head.bbox_head.conv_out_channels'] = 32
    return opts


def data_options(root: Path, batch_size: int = 2) -> dict:
    opts = {}
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        opts.update({
            f'{loader}.batch_size': batch_size,
            f'{loader}.num_workers': 0,
            f'{loader}.persistent_workers': False,
            f'{loader}.dataset.data_root': str(root),
            f'{loader}.dataset.ann_file': 'instances.json',
            f'{loader}.dataset.data_prefix.img': 'images/',
        })
    # Resize is pipeline step 2 (train) and 1 (test): keep the images small.
    opts['train_dataloader.dataset.pipeline.2.scale'] = (80, 64)
    for loader in ('val_dataloader', 'test_dataloader'):
        opts[f'{loader}.dataset.pipeline.1.scale'] = (80, 64)
    for evaluator in ('val_evaluator', 'test_evaluator'):
        opts[f'{evaluator}.ann_file'] = str(root / 'instances.json')
    return opts


def tiny_options(cfg, root: Path) -> dict:
    return {
        **backbone_options(cfg), **head_options(cfg), **data_options(root),
        'train_cfg.max_epochs': 1,
        'default_hooks.logger.interval': 1,
        'randomness.seed': 0,
    }


def cli(options: dict) -> list:
    """--cfg-options KEY=VALUE strings for the same overrides."""
    def text(value):
        if isinstance(value, (list, tuple)):
            inner = ','.join(map(text, value))
            return f'[{inner}]' if isinstance(value, list) else f'({inner})'
        return str(value)

    return [f'{key}={text(value)}' for key, value in options.items()]


def load(path: Path, options: dict) -> Config:
    cfg = Config.fromfile(str(path))
    cfg.merge_from_dict(copy.deepcopy(options))
    return cfg


def save_pretrained(cfg: Config, path: Path) -> dict:
    """The tiny backbone, initialised here and saved like a converted
    pre-trained checkpoint (trunk keys only, no side network)."""
    from mmdet.registry import MODELS

    backbone_cfg = copy.deepcopy(cfg.model.backbone)
    backbone_cfg.init_cfg = None
    init_default_scope('mmdet')
    with DefaultScope.overwrite_default_scope('mmdet'):
        torch.manual_seed(1)
        backbone = MODELS.build(backbone_cfg)
    backbone.init_weights()
    with torch.no_grad():  # random, distinct values (some tables start at zero)
        for name, param in backbone.named_parameters():
            if 'relative_position_bias_table' in name or 'pos_embed' in name:
                param.normal_(std=0.02)
    state = {k: v for k, v in backbone.state_dict().items() if not k.startswith('csn.')}
    torch.save(state, path)
    return state


def check_frozen_and_trained(state: dict, pretrained: dict, prefix: str = 'backbone.'):
    """Every trunk tensor is bit-identical to the pre-trained one; the side
    network trained (B starts at zero)."""
    assert len(pretrained) > 20
    for key, value in pretrained.items():
        assert torch.equal(state[prefix + key], value), key
    ups = [v for k, v in state.items() if k.startswith(prefix + 'csn.up_projs.')]
    assert ups and any(up.abs().sum() > 0 for up in ups)


def check_metrics(metrics: dict, segm: bool):
    keys = ['coco/bbox_mAP'] + (['coco/segm_mAP'] if segm else [])
    for key in keys:
        assert key in metrics, metrics
        assert 0 <= metrics[key] <= 1, metrics


# -------------------------------------------------------------------- tests
def test_configs_follow_the_recipes():
    by_name = {p.name: Config.fromfile(str(p)) for p in CONFIGS}
    assert len(by_name) >= 5
    for name, cfg in by_name.items():
        assert cfg.default_scope == 'mmdet'
        assert cfg.custom_imports == dict(imports=['mmdtl'], allow_failed_imports=False)
        assert cfg.train_cfg.max_epochs == 12, name
        backbone = cfg.model.backbone
        assert backbone.type in ('mmpretrain.DTLSwin', 'mmpretrain.DTLViT')
        assert backbone.freeze_backbone and backbone.init_cfg.type == 'Pretrained'
        if 'mask-rcnn' in name:
            assert cfg.optim_wrapper.optimizer.type == 'AdamW'
            assert (cfg.optim_wrapper.optimizer.lr, cfg.optim_wrapper.optimizer.weight_decay) \
                == (1e-4, 0.05)
        else:
            assert cfg.optim_wrapper.optimizer.type == 'SGD'
            assert cfg.optim_wrapper.optimizer.lr == 0.01
    swin_b = by_name['mask-rcnn_dtl+-swin-b-p4-w7_fpn_1x_coco.py'].model.backbone
    assert (swin_b.arch, swin_b.csn.rank, swin_b.csn.taps, swin_b.csn.start) == \
        ('base', 4, list(range(4, 24)), 14)
    assert by_name['mask-rcnn_dtl+-swin-t-p4-w7_fpn_1x_coco.py'].model.backbone.out_indices \
        == (0, 1, 2, 3)
    vit = by_name['mask-rcnn_dtl+-vit-b_simplefpn_1x_coco.py'].model
    assert vit.backbone.out_type == 'featmap' and vit.neck.type == 'SimpleFPN'
    assert vit.data_preprocessor.pad_size_divisor % 16 == 0  # the patch grid fits


@pytest.mark.parametrize(
    'path', [p for p in CONFIGS if p != SUBPROCESS_CONFIG], ids=lambda p: p.stem)
def test_config_trains_and_evaluates(path, coco_root, tmp_path):
    """In-process Runner: a few iterations, then one COCO evaluation."""
    from mmengine.runner import Runner

    cfg = load(path, tiny_options(Config.fromfile(str(path)), coco_root))
    pretrained = save_pretrained(cfg, tmp_path / 'pretrained.pth')
    cfg.model.backbone.init_cfg.checkpoint = str(tmp_path / 'pretrained.pth')
    cfg.work_dir = str(tmp_path / 'work')
    cfg.experiment_name = f'{path.stem}_{time.time_ns()}'
    cfg.visualizer.name = cfg.experiment_name
    cfg.train_cfg.val_interval = 100  # evaluate once, below
    cfg.default_hooks.checkpoint.interval = 100

    runner = Runner.from_cfg(cfg)
    runner.model.init_weights()  # the state before training (train() keeps it)
    before = copy.deepcopy(runner.model.state_dict())
    runner.train()
    after = runner.model.state_dict()
    check_frozen_and_trained(after, pretrained)
    csn = [k for k in after if k.startswith('backbone.csn.')]
    assert any(not torch.equal(after[k], before[k]) for k in csn)
    trunk = [k for k in after if k.startswith('backbone.') and k not in csn]
    assert all(torch.equal(after[k], before[k]) for k in trunk)
    # ... while the neck trained too.
    neck = [k for k in after if k.startswith('neck.')]
    assert any(not torch.equal(after[k], before[k]) for k in neck)

    check_metrics(runner.val(), segm=cfg.model.type == 'MaskRCNN')


def test_train_tool_then_test_tool(coco_root, tmp_path, monkeypatch, load_cli):
    """tools/train.py in a subprocess (validation every epoch), then
    tools/test.py on its checkpoint."""
    cfg = Config.fromfile(str(SUBPROCESS_CONFIG))
    options = tiny_options(cfg, coco_root)
    pretrained = save_pretrained(load(SUBPROCESS_CONFIG, options), tmp_path / 'pre.pth')
    options['model.backbone.init_cfg.checkpoint'] = str(tmp_path / 'pre.pth')
    work_dir = tmp_path / 'work'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    env['PYTHONPATH'] = os.pathsep.join([str(REPO), env.get('PYTHONPATH', '')])
    proc = subprocess.run(
        [sys.executable, 'tools/train.py', str(SUBPROCESS_CONFIG.relative_to(REPO)),
         '--work-dir', str(work_dir), '--cfg-options', *cli(options)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=300)
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert 'coco/bbox_mAP' in proc.stdout and 'coco/segm_mAP' in proc.stdout
    checkpoint = work_dir / 'epoch_1.pth'
    state = torch.load(checkpoint, map_location='cpu', weights_only=True)['state_dict']
    check_frozen_and_trained(state, pretrained)

    test = load_cli('tools/test.py')
    monkeypatch.setattr(sys, 'argv', [
        'test.py', str(SUBPROCESS_CONFIG), str(checkpoint), '--work-dir',
        str(tmp_path / 'test'), '--cfg-options', *cli(options),
        f'visualizer.name=test_{time.time_ns()}'
    ])
    check_metrics(test.main(), segm=True)


# ------------------------------------------------------------------ SimpleFPN
def test_simple_fpn_shapes_and_strides():
    from mmdet.registry import MODELS

    init_default_scope('mmdet')
    neck = MODELS.build(dict(type='SimpleFPN', backbone_channel=32, in_channels=[8, 16, 32, 32],
                             out_channels=24, num_outs=5,
                             norm_cfg=dict(type='mmpretrain.LN2d', requires_grad=True)))
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        vit = MODELS.build(dict(
            type='mmpretrain.DTLViT', img_size=64, patch_size=16, out_type='featmap',
            arch=dict(embed_dims=32, num_layers=4, num_heads=2, feedforward_channels=64),
            csn=dict(type='CompactSideNetwork', rank=2, taps=[0, 1, 2, 3], start=2)))
    images = torch.randn(2, 3, 128, 192)
    feats = vit(images)
    assert feats[-1].shape == (2, 32, 8, 12)  # stride 16
    outs = neck(feats)
    assert len(outs) == 5
    for out, stride in zip(outs, [4, 8, 16, 32, 64]):
        assert out.shape == (2, 24, 128 // stride, 192 // stride)
    # LayerNorm over channels after every lateral/output conv; trainable.
    assert all(p.requires_grad for p in neck.parameters())
    assert type(neck.fpn_convs[0].norm).__name__ == 'LayerNorm2d'
    outs[0].mean().backward()
    assert vit.csn.up_projs['2'].grad is not None


def test_simple_fpn_errors():
    from mmdtl.models.necks import SimpleFPN

    with pytest.raises(ValueError, match=r'in_channels=\[8, 16, 32\] does not match'):
        SimpleFPN(backbone_channel=32, in_channels=[8, 16, 32], out_channels=8)
    with pytest.raises(ValueError, match='num_outs must be an int >= 4'):
        SimpleFPN(backbone_channel=32, in_channels=[8, 16, 32, 32], out_channels=8, num_outs=3)
    neck = SimpleFPN(backbone_channel=32, in_channels=[8, 16, 32, 32], out_channels=8)
    with pytest.raises(ValueError, match='out_type="featmap"'):
        neck((torch.randn(2, 32), ))


# ---------------------------------------------------------- detection_memory
@pytest.mark.parametrize('name', ['mask-rcnn_dtl+-vit-b_simplefpn_1x_coco',
                                  'retinanet_dtl+-swin-t-p4-w7_fpn_1x_coco'])
def test_detection_memory_tool(name, tmp_path, load_cli):
    path = REPO / 'configs' / 'mmdet' / f'{name}.py'
    cfg = Config.fromfile(str(path))
    options = {**backbone_options(cfg), **head_options(cfg)}
    tool = load_cli('tools/analysis/detection_memory.py')
    rows = tool.main([str(path), '--img-size', '64', '96', '--batch-size', '1',
                      '--num-objects', '2', '--device', 'cpu', '--work-dir', str(tmp_path),
                      '--cfg-options', *cli(options)])
    dtl, full = rows
    assert (dtl['mode'], full['mode']) == ('dtl', 'full')
    # Only the side network trains in the backbone; full trains all of it.
    assert 0 < dtl['trainable_backbone'] < 0.2 * full['trainable_backbone']
    assert dtl['trainable_total'] < full['trainable_total'] == full['total_params']
    # DTL keeps fewer activations for backward, in the backbone and in all.
    assert dtl['backbone_activation_mb'] < 0.8 * full['backbone_activation_mb']
    assert dtl['activation_mb'] < full['activation_mb']
    assert dtl['activation_vs_full'] < 1 == full['activation_vs_full']
    table = (tmp_path / 'detection_memory.md').read_text()
    assert f'| {name} | dtl |' in table and '64x96 px' in table
    lines = (tmp_path / 'detection_memory.csv').read_text().splitlines()
    assert lines[0].startswith('config,mode,backbone_options,neck_head_options,trainable_backbone')
    assert len(lines) == 3
