"""DTL backbones in mmseg: every config under configs/mmseg/ trains and evaluates.

A tiny ADE20K-style dataset (mmseg's folder layout, JPEG images, 8-bit index
PNGs with 0 = ignored) is written here. Every config takes a real training
step through mmengine's Runner with its real arch (Swin-B, ViT-B) on 64x64
crops; the tool, trunk-check and memory-option tests shrink the trunk and the
heads through config overrides only.
"""
import copy
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

pytest.importorskip('mmseg')
import mmseg.models  # noqa: F401,E402  (registers mmseg's modules)

import mmdtl  # noqa: F401,E402
from mmdtl.utils import TrunkMismatchError, TrunkNotLoadedError  # noqa: E402
from mmdtl.utils.memory import SavedTensorMeter  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / 'configs' / 'mmseg').glob('*.py'))
SWIN = REPO / 'configs/mmseg/upernet_dtl+-swin-b-p4-w7_8xb2-160k_ade20k-512x512.py'
VIT = REPO / 'configs/mmseg/upernet_dtl+-vit-b16-mln_8xb2-160k_ade20k-512x512.py'
# File values of the objects (ADE20K: 0 is ignored, 1-150 are the classes).
CLASSES = (1, 3, 13, 150)


# ----------------------------------------------------------------- tiny data
def write_sample(root: Path, split: str, name: str, rng, label_values=CLASSES) -> None:
    """A 64x80 image with a rectangle and a triangle, and its label PNG."""
    height, width = 64, 80
    img = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
    label = np.zeros((height, width), np.uint8)  # 0: ignored by reduce_zero_label
    label[:, width // 2:] = label_values[0]
    x, y = int(rng.integers(4, 20)), int(rng.integers(4, 20))
    shapes = [(label_values[1], np.array([[x, y], [x + 24, y], [x + 24, y + 20], [x, y + 20]])),
              (label_values[2], np.array([[width - 30, 60], [width - 4, 60], [width - 17, 36]])),
              (label_values[3], np.array([[2, 50], [12, 50], [12, 60], [2, 60]]))]
    for value, poly in shapes:
        cv2.fillPoly(img, [poly.astype(np.int32)], (200, 37 * value % 255, 40))
        cv2.fillPoly(label, [poly.astype(np.int32)], int(value))
    cv2.imwrite(str(root / 'images' / split / f'{name}.jpg'), img)
    cv2.imwrite(str(root / 'annotations' / split / f'{name}.png'), label)


@pytest.fixture(scope='module')
def ade_root(tmp_path_factory):
    """mmseg's ADE20K layout: images/{training,validation}/*.jpg and
    annotations/{training,validation}/*.png (4 + 2 samples)."""
    root = tmp_path_factory.mktemp('ade') / 'ADEChallengeData2016'
    for split in ('training', 'validation'):
        (root / 'images' / split).mkdir(parents=True)
        (root / 'annotations' / split).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(4):
        write_sample(root, 'training', f'ADE_train_{i:08d}', rng)
    for i in range(2):
        write_sample(root, 'validation', f'ADE_val_{i:08d}', rng)
    return root


# ------------------------------------------------------------ tiny overrides
def is_swin(cfg) -> bool:
    return 'Swin' in cfg.model.backbone.type


def tiny_arch_options(cfg) -> dict:
    """A tiny trunk with a side network that keeps the recipe's structure
    (Swin: taps in stages 2-3, add back from inside stage 2, four stage
    outputs; ViT: taps everywhere, two of the four outputs inside the frozen
    prefix), narrow neck and heads."""
    heads = {
        'model.decode_head.channels': 32,
        'model.auxiliary_head.channels': 16,
    }
    if is_swin(cfg):
        return {
            **heads,
            'model.backbone.arch._delete_': True,
            'model.backbone.arch.embed_dims': 16,
            'model.backbone.arch.depths': [2, 2, 2, 2],
            'model.backbone.arch.num_heads': [1, 1, 2, 2],
            'model.backbone.window_size': 4,
            'model.backbone.csn.taps': [4, 5, 6, 7],  # stages 2-3
            'model.backbone.csn.start': 5,
            'model.decode_head.in_channels': [16, 32, 64, 128],
            'model.auxiliary_head.in_channels': 64,
        }
    return {
        **heads,
        'model.backbone.arch._delete_': True,
        'model.backbone.arch.embed_dims': 32,
        'model.backbone.arch.num_layers': 4,
        'model.backbone.arch.num_heads': 2,
        'model.backbone.arch.feedforward_channels': 64,
        'model.backbone.img_size': 64,
        'model.backbone.out_indices': (0, 1, 2, 3),
        'model.backbone.csn.taps': [0, 1, 2, 3],
        'model.backbone.csn.start': 2,
        'model.neck.in_channels': [32, 32, 32, 32],
        'model.neck.out_channels': 32,
        'model.decode_head.in_channels': [32, 32, 32, 32],
        'model.auxiliary_head.in_channels': 32,
    }


def data_options(root: Path, batch_size: int = 2) -> dict:
    """64x64 crops of images resized to about 64 px, batches of 2 (BN in the
    heads needs more than one value per channel)."""
    opts = {'model.data_preprocessor.size': (64, 64)}
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        opts.update({
            f'{loader}.batch_size': batch_size if loader == 'train_dataloader' else 1,
            f'{loader}.num_workers': 0,
            f'{loader}.persistent_workers': False,
            f'{loader}.dataset.data_root': str(root),
        })
    # train: load, annotations, CheckSegLabels, RandomResize, RandomCrop, ...
    opts['train_dataloader.dataset.pipeline.3.scale'] = (160, 64)
    opts['train_dataloader.dataset.pipeline.4.crop_size'] = (64, 64)
    for loader in ('val_dataloader', 'test_dataloader'):  # load, Resize, ...
        opts[f'{loader}.dataset.pipeline.1.scale'] = (160, 64)
    return opts


def run_options(root: Path, iters: int = 1) -> dict:
    return {
        **data_options(root),
        'train_cfg.max_iters': iters,
        'train_cfg.val_interval': iters,
        'default_hooks.checkpoint.interval': iters,
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


def build_backbone(cfg: Config):
    from mmseg.registry import MODELS

    backbone_cfg = copy.deepcopy(cfg.model.backbone)
    backbone_cfg.init_cfg = None
    init_default_scope('mmseg')
    with DefaultScope.overwrite_default_scope('mmseg'):
        return MODELS.build(backbone_cfg)


def save_pretrained(cfg: Config, path: Path) -> dict:
    """The tiny trunk, initialised here and saved like a converted
    pre-trained checkpoint (trunk keys only, no side network)."""
    torch.manual_seed(1)
    backbone = build_backbone(cfg)
    backbone.init_weights()
    with torch.no_grad():  # random, distinct values (some tables start at zero)
        for name, param in backbone.named_parameters():
            if 'relative_position_bias_table' in name or 'pos_embed' in name:
                param.normal_(std=0.02)
    state = {k: v for k, v in backbone.state_dict().items() if not k.startswith('csn.')}
    torch.save(state, path)
    return state


def runner_cfg(cfg: Config, tmp_path: Path, name: str) -> Config:
    cfg.work_dir = str(tmp_path / 'work')
    cfg.experiment_name = f'{name}_{time.time_ns()}'
    cfg.visualizer.name = cfg.experiment_name
    return cfg


def check_frozen_and_trained(before: dict, after: dict) -> None:
    """The trunk is bit-identical, the side network and the heads trained."""
    csn = [k for k in after if k.startswith('backbone.csn.')]
    trunk = [k for k in after if k.startswith('backbone.') and k not in csn]
    assert len(trunk) > 20 and csn
    assert all(torch.equal(after[k], before[k]) for k in trunk)
    # B starts at zero: any change comes from a gradient through the CSN.
    ups = [k for k in csn if '.up_projs.' in k]
    assert ups and any(after[k].abs().sum() > 0 for k in ups)
    for head in ('decode_head.', 'auxiliary_head.'):
        keys = [k for k in after if k.startswith(head) and after[k].is_floating_point()]
        assert any(not torch.equal(after[k], before[k]) for k in keys), head


def check_metrics(metrics: dict) -> None:
    for key in ('mIoU', 'aAcc', 'mAcc'):
        assert key in metrics, metrics
        assert 0 <= metrics[key] <= 100, metrics


# -------------------------------------------------------------------- tests
def test_configs_follow_the_recipes():
    by_name = {p.name: Config.fromfile(str(p)) for p in CONFIGS}
    assert len(by_name) == 4
    for name, cfg in by_name.items():
        assert cfg.default_scope == 'mmseg'
        assert cfg.custom_imports == dict(imports=['mmdtl'], allow_failed_imports=False)
        assert cfg.train_cfg.max_iters == 160000 and cfg.global_batch_size == 16, name
        assert cfg.auto_scale_lr == dict(enable=False, base_batch_size=16)
        assert cfg.crop_size == (512, 512)
        assert cfg.optim_wrapper.optimizer.type == 'AdamW'
        assert (cfg.optim_wrapper.optimizer.lr, cfg.optim_wrapper.optimizer.weight_decay) \
            == (6e-5, 0.01)
        assert cfg.default_hooks.checkpoint.type == 'AtomicCheckpointHook'
        assert cfg.default_hooks.trunk_check.type == 'TrunkCheckHook'
        backbone = cfg.model.backbone
        assert backbone.freeze_backbone and backbone.init_cfg.type == 'Pretrained'
        assert backbone.csn.type == 'mmpretrain.CompactSideNetwork'
        assert cfg.model.decode_head.num_classes == cfg.model.auxiliary_head.num_classes == 150
        kernel = 0 if name.startswith('upernet_dtl-') else (5 if is_swin(cfg) else 3)
        assert backbone.csn.dwconv_kernel == kernel, name
        # The label check follows LoadAnnotations in every pipeline.
        for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
            types = [t['type'] for t in cfg[loader].dataset.pipeline]
            at = types.index('LoadAnnotations')
            assert types[at + 1] == 'CheckSegLabels', (name, loader)
            assert cfg[loader].dataset.pipeline[at + 1].num_classes == 150
        if is_swin(cfg):
            assert (backbone.type, backbone.arch, backbone.out_indices) == \
                ('mmpretrain.DTLSwin', 'base', (0, 1, 2, 3))
            assert (backbone.csn.rank, backbone.csn.taps, backbone.csn.start) == \
                (4, list(range(4, 24)), 14)
            assert backbone.init_cfg.checkpoint == 'checkpoints/swin-b_in22k_mmpretrain.pth'
        else:
            assert (backbone.type, backbone.arch, backbone.out_type) == \
                ('mmpretrain.DTLViT', 'b', 'featmap')
            assert (backbone.csn.rank, backbone.csn.taps, backbone.csn.start) == \
                (2, list(range(12)), 6)
            assert cfg.model.neck.type == 'MultiLevelNeck' and cfg.model.pretrained is None
            assert backbone.init_cfg.checkpoint == 'checkpoints/vit-b16_in21k_mmpretrain.pth'
    # The recipes of the mmdet configs.
    for trunk in ('swin-b-p4-w7_fpn', 'vit-b_simplefpn'):
        det = Config.fromfile(str(REPO / f'configs/mmdet/mask-rcnn_dtl+-{trunk}_1x_coco.py'))
        seg = by_name[f'upernet_dtl+-{"swin-b-p4-w7" if "swin" in trunk else "vit-b16-mln"}'
                      '_8xb2-160k_ade20k-512x512.py']
        assert det.model.backbone.csn == seg.model.backbone.csn
        assert det.model.backbone.init_cfg == seg.model.backbone.init_cfg


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: p.stem)
def test_config_takes_a_training_step(path, ade_root, tmp_path):
    """The real arch (Swin-B / ViT-B, UPerNet) from mmseg's registry, one
    Runner iteration on 64x64 crops of the tiny dataset, random trunk."""
    from mmengine.runner import Runner

    cfg = runner_cfg(load(path, run_options(ade_root)), tmp_path, path.stem)
    cfg.model.backbone.init_cfg = None
    cfg.model.backbone.allow_random_trunk = True
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    runner = Runner.from_cfg(cfg)
    runner.model.init_weights()  # the state before training (train() keeps it)
    before = copy.deepcopy(runner.model.state_dict())
    runner.train()
    check_frozen_and_trained(before, runner.model.state_dict())
    assert runner.iter == 1


def test_train_tool_then_test_tool(ade_root, tmp_path, monkeypatch, load_cli):
    """tools/train.py in a subprocess (2 iterations, IoU evaluation after the
    second), then tools/test.py on its checkpoint with --show-dir."""
    cfg = Config.fromfile(str(VIT))
    options = {**tiny_arch_options(cfg), **run_options(ade_root, iters=2)}
    pretrained = save_pretrained(load(VIT, options), tmp_path / 'pre.pth')
    options['model.backbone.init_cfg.checkpoint'] = str(tmp_path / 'pre.pth')
    work_dir = tmp_path / 'work'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    env['PYTHONPATH'] = os.pathsep.join([str(REPO), env.get('PYTHONPATH', '')])
    proc = subprocess.run(
        [sys.executable, 'tools/train.py', str(VIT.relative_to(REPO)),
         '--work-dir', str(work_dir), '--cfg-options', *cli(options)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=300)
    assert proc.returncode == 0, proc.stdout[-5000:]
    assert 'mIoU' in proc.stdout and 'aAcc' in proc.stdout, proc.stdout[-3000:]
    # train_dataloader.batch_size from the command line is per process.
    assert 'Batch: global 2 = 1 process(es) x 2 per process' in proc.stdout
    state = torch.load(work_dir / 'iter_2.pth', map_location='cpu',
                       weights_only=True)['state_dict']
    for key, value in pretrained.items():
        assert torch.equal(state['backbone.' + key], value), key

    test = load_cli('tools/test.py')
    show_dir = tmp_path / 'show'
    monkeypatch.setattr(sys, 'argv', [
        'test.py', str(VIT), str(work_dir / 'iter_2.pth'), '--work-dir',
        str(tmp_path / 'test'), '--show-dir', str(show_dir), '--cfg-options', *cli(options),
        f'visualizer.name=test_{time.time_ns()}'
    ])
    check_metrics(test.main())
    drawn = sorted(p.name for p in show_dir.rglob('*.png'))
    assert len(drawn) == 2 and all('ADE_val_' in name for name in drawn), drawn


# ------------------------------------------------------------- trunk check
def test_trunk_check_refuses_a_mismatched_checkpoint(ade_root, tmp_path):
    """A Swin checkpoint of another width in the Swin config, loaded through
    init_cfg by the Runner: TrunkMismatchError naming the file."""
    from mmengine.runner import Runner

    options = {**tiny_arch_options(Config.fromfile(str(SWIN))), **run_options(ade_root)}
    wide = load(SWIN, {**options, 'model.backbone.arch.embed_dims': 24})
    save_pretrained(wide, tmp_path / 'wide.pth')
    cfg = runner_cfg(load(SWIN, options), tmp_path, 'mismatch')
    cfg.model.backbone.init_cfg.checkpoint = str(tmp_path / 'wide.pth')
    runner = Runner.from_cfg(cfg)
    with pytest.raises(TrunkMismatchError, match=r'wide\.pth') as info:
        runner.train()
    assert 'shape' in str(info.value)


def test_swin_config_loads_a_classification_trunk(tmp_path):
    """A converted Swin classifier has only the last stage's output norm; the
    config reads all four stages, whose norms 0-2 are new and stay at their
    initialisation (frozen LayerNorms, weight 1 and bias 0). One present with
    another shape is still refused."""
    cfg = load(SWIN, tiny_arch_options(Config.fromfile(str(SWIN))))
    classifier = copy.deepcopy(cfg)
    classifier.model.backbone.out_indices = (3, )  # what swin_to_mmpretrain.py writes
    state = save_pretrained(classifier, tmp_path / 'cls.pth')
    assert 'norm3.weight' in state and 'norm0.weight' not in state
    cfg.model.backbone.init_cfg.checkpoint = str(tmp_path / 'cls.pth')
    backbone = build_backbone(cfg)
    backbone.init_cfg = cfg.model.backbone.init_cfg
    backbone.init_weights()
    assert backbone.trunk_source == str(tmp_path / 'cls.pth')
    assert torch.equal(backbone.norm3.weight, state['norm3.weight'])
    for i in range(3):
        norm = getattr(backbone, f'norm{i}')
        assert not norm.weight.requires_grad
        assert torch.equal(norm.weight, torch.ones_like(norm.weight))
        assert torch.equal(norm.bias, torch.zeros_like(norm.bias))
    state['norm1.weight'] = torch.ones(7)
    with pytest.raises(TrunkMismatchError, match=r'norm1\.weight \(7,\) in the checkpoint'):
        backbone.load_state_dict(state, strict=False)


def test_trunk_check_refuses_a_random_trunk(ade_root, tmp_path):
    """No checkpoint at all: the config's TrunkCheckHook stops training,
    unless allow_random_trunk=True."""
    from mmengine.runner import Runner

    options = {**tiny_arch_options(Config.fromfile(str(VIT))), **run_options(ade_root)}
    cfg = runner_cfg(load(VIT, options), tmp_path, 'random')
    cfg.model.backbone.init_cfg = None
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    with pytest.raises(TrunkNotLoadedError, match='allow_random_trunk=True'):
        Runner.from_cfg(copy.deepcopy(cfg)).train()
    cfg.model.backbone.allow_random_trunk = True
    runner = Runner.from_cfg(runner_cfg(cfg, tmp_path, 'random_allowed'))
    runner.train()
    assert runner.iter == 1


# ---------------------------------------------------------- memory options
MEMORY_OPTIONS = {
    'checkpoint_suffix': dict(checkpoint_suffix=True),
    'recompute_prefix_taps': dict(recompute_prefix_taps=True),
    'prefix_cache': dict(prefix_cache=dict(storage='memory')),
    'frozen_weights_dtype': dict(frozen_weights_dtype='bfloat16'),
    'pack_frozen_weights': dict(pack_frozen_weights=True),
}
PREFIX_OPTIONS = ('recompute_prefix_taps', 'prefix_cache')


def option_cfg(path: Path, extra: dict) -> Config:
    """The tiny config, deterministic (no dropout or drop path), with the
    side network's add-back moved to the block where the first output is
    taken (Swin: the end of stage 0, ViT: block 0): a stored or recomputed
    prefix cannot give outputs from inside it."""
    cfg = Config.fromfile(str(path))
    options = {**tiny_arch_options(cfg), 'model.backbone.drop_path_rate': 0.,
               'model.decode_head.dropout_ratio': 0., 'model.auxiliary_head.dropout_ratio': 0.,
               'model.data_preprocessor.size': (64, 64)}
    if is_swin(cfg):
        options.update({'model.backbone.csn.taps': list(range(8)), 'model.backbone.csn.start': 1})
    else:
        options['model.backbone.csn.start'] = 0
    cfg = load(path, options)
    cfg.model.backbone.update(extra, init_cfg=None, allow_random_trunk=True)
    return cfg


def build_model(cfg: Config):
    from mmengine.model import revert_sync_batchnorm
    from mmseg.registry import MODELS

    init_default_scope('mmseg')
    return revert_sync_batchnorm(MODELS.build(cfg.model))


def batch(ade_root: Path) -> dict:
    """Two training samples from the tiny dataset as the data loader gives them."""
    from mmengine.dataset import pseudo_collate
    from mmseg.registry import DATASETS

    cfg = load(SWIN, data_options(ade_root))
    init_default_scope('mmseg')
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    torch.manual_seed(0)
    np.random.seed(0)
    return pseudo_collate([dataset[0], dataset[1]])


def step(model, data: dict):
    """One training step (data preprocessor, loss, backward, AdamW update);
    the loss, the side network after it and the bytes saved for backward."""
    from mmengine.optim import build_optim_wrapper

    wrapper = build_optim_wrapper(model, dict(optimizer=dict(type='AdamW', lr=1e-3)))
    model.train()
    with SavedTensorMeter(exclude=model.parameters()) as meter:
        log = model.train_step(copy.deepcopy(data), wrapper)
    # train_step zeroes the gradients after the update; read the CSN's new
    # weights instead (same state before, same lr: equal when the grads are).
    csn = {k: v.detach().clone() for k, v in model.backbone.csn.state_dict().items()}
    return log['loss'].detach(), csn, meter.bytes


@pytest.fixture(scope='module')
def plain_steps(ade_root):
    """Per trunk: the state before the step, the batch, and the plain step's
    loss and side network after it (computed once)."""
    results = {}

    def get(path: Path):
        if path not in results:
            torch.manual_seed(0)
            plain = build_model(option_cfg(path, {}))
            plain.init_weights()
            with torch.no_grad():  # a side network that already changes the stream
                for up in plain.backbone.csn.up_projs.values():
                    up.normal_(std=0.05)
            state = copy.deepcopy(plain.state_dict())
            data = batch(ade_root)
            results[path] = (state, data, *step(plain, data))
        return results[path]

    return get


@pytest.mark.parametrize('option', list(MEMORY_OPTIONS))
@pytest.mark.parametrize('path', [SWIN, VIT], ids=['swin', 'vit'])
def test_memory_option_from_the_config(option, path, plain_steps):
    """Every memory option is a config key of the backbone and gives the
    training step of the plain model (results-preserving options: the same
    loss and side-network update; half-stored weights: close)."""
    state, data, loss, csn, saved = plain_steps(path)
    model = build_model(option_cfg(path, MEMORY_OPTIONS[option]))
    (name, value), = MEMORY_OPTIONS[option].items()
    assert getattr(model.backbone.dtl_options, name) == value
    model.load_state_dict(state)
    assert model.backbone.trunk_source is not None
    option_loss, option_csn, option_saved = step(model, data)
    loose = option == 'frozen_weights_dtype'
    tol = dict(rtol=5e-2, atol=5e-2) if loose else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(option_loss, loss, **tol)
    for key in csn:
        torch.testing.assert_close(option_csn[key], csn[key], **tol)
    if option == 'checkpoint_suffix':
        assert option_saved < saved  # what it is for
    # (recompute_prefix_taps keeps the images instead of the prefix's taps:
    # more bytes at this toy width, fewer for a real trunk.)
    if option == 'prefix_cache':
        assert model.backbone.prefix_cache.misses == 2  # both images stored
    if option == 'frozen_weights_dtype':
        dtypes = {p.dtype for n, p in model.backbone.named_parameters() if 'csn' not in n}
        assert torch.bfloat16 in dtypes


@pytest.mark.parametrize('option', PREFIX_OPTIONS)
@pytest.mark.parametrize('path', [SWIN, VIT], ids=['swin', 'vit'])
def test_prefix_options_refuse_outputs_inside_the_prefix(option, path):
    """With the recipes' outputs (Swin stages 0-1, ViT blocks 2 and 5 before
    block M), a stored or recomputed prefix is refused at build time."""
    cfg = load(path, {**tiny_arch_options(Config.fromfile(str(path))),
                      'model.backbone.drop_path_rate': 0.})
    cfg.model.backbone.update(MEMORY_OPTIONS[option], init_cfg=None)
    with pytest.raises(ValueError, match=rf'{option}: out_indices \[0, 1\] lie in the'):
        build_backbone(cfg)


# ------------------------------------------------------------- label check
def test_label_check_names_file_values_and_range(ade_root, tmp_path):
    """A label PNG with classes 151 and 200 (ADE20K has 1-150 in the file):
    the dataset pipeline of a config raises with the file, the values and the
    allowed range; a 16-bit PNG with 300 (which mmseg would wrap to 44) too."""
    from mmseg.registry import DATASETS

    root = tmp_path / 'ADEChallengeData2016'
    for split in ('training', 'validation'):
        (root / 'images' / split).mkdir(parents=True)
        (root / 'annotations' / split).mkdir(parents=True)
    rng = np.random.default_rng(0)
    write_sample(root, 'training', 'good', rng)
    write_sample(root, 'training', 'bad', rng, label_values=(1, 151, 200, 5))
    cfg = load(SWIN, data_options(root))
    init_default_scope('mmseg')
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    names = [Path(dataset.get_data_info(i)['seg_map_path']).name for i in range(len(dataset))]
    dataset[names.index('good.png')]  # a fitting file passes
    bad = str(root / 'annotations' / 'training' / 'bad.png')
    with pytest.raises(ValueError) as info:
        dataset[names.index('bad.png')]
    message = str(info.value)
    assert bad in message and '[151, 200]' in message
    assert '1-150 for the 150 classes' in message and '255' in message

    wide = (np.arange(64 * 80).reshape(64, 80) % 3 + 1).astype(np.uint16)
    wide[:4, :4] = 300
    cv2.imwrite(bad, wide)
    with pytest.raises(ValueError, match=r'bad\.png \(I;16.*\[300\] above 255'):
        dataset[names.index('bad.png')]

    # The test pipeline checks too (evaluation would drop the pixels silently).
    val = load(SWIN, data_options(root)).val_dataloader.dataset
    val.data_prefix = dict(img_path='images/training', seg_map_path='annotations/training')
    cv2.imwrite(bad, np.full((64, 80), 180, np.uint8))
    val_set = DATASETS.build(val)
    with pytest.raises(ValueError, match=r'\[180\] out of range'):
        val_set[names.index('bad.png')]


def test_label_check_shape_and_arguments(tmp_path):
    from mmdtl.datasets.transforms import CheckSegLabels

    check = CheckSegLabels(num_classes=4)
    seg = np.array([[0, 3], [255, 1]], np.uint8)
    assert check(dict(gt_seg_map=seg, seg_map_path='a.png'))['gt_seg_map'] is seg
    with pytest.raises(ValueError, match=r'a\.png holds class values \[4, 7\] out of range; '
                       r'allowed: 0-3 for the 4 classes and 255'):
        check(dict(gt_seg_map=np.array([[4, 7]], np.uint8), seg_map_path='a.png'))
    with pytest.raises(ValueError, match='has 3 channels'):
        check(dict(gt_seg_map=np.zeros((2, 2, 3), np.uint8), seg_map_path='c.png'))
    with pytest.raises(ValueError, match=r'is 2x2 px but its image i\.jpg is 3x2 px'):
        check(dict(gt_seg_map=seg, seg_map_path='a.png', img_path='i.jpg', ori_shape=(2, 3)))
    with pytest.raises(ValueError, match='num_classes must be a positive int'):
        CheckSegLabels(num_classes=0)


def test_cpu_distributed_replaces_sync_bn():
    """DDP refuses SyncBatchNorm on CPU: tools/train.py's CPU distributed
    set-up turns mmseg's SyncBN heads into per-process BN and says so."""
    from mmdtl.engine.launch import replace_sync_bn
    cfg = Config.fromfile(str(SWIN))
    assert cfg.model.decode_head.norm_cfg.type == 'SyncBN'
    found = replace_sync_bn(cfg.model)
    assert found == ['model.decode_head.norm_cfg', 'model.auxiliary_head.norm_cfg']
    assert cfg.model.decode_head.norm_cfg.type == cfg.model.auxiliary_head.norm_cfg.type == 'BN'
    assert replace_sync_bn(cfg.model) == []
