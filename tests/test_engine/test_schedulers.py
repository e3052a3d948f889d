"""TimmCosineLR: the released per-epoch learning rate (timm 0.5.4's
CosineLRScheduler, 110 epochs) for the real configs, stepped as mmengine does."""
import math
import os
import os.path as osp
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.optim import OptimWrapper, build_optim_wrapper
from mmengine.registry import RUNNERS, DefaultScope

import mmdtl  # noqa: F401  (registers the scheduler)
from mmdtl.datasets.few_shot import apply_few_shot_options
from mmdtl.engine import TimmCosineLR

REPO = Path(__file__).resolve().parents[2]


def released_lr(lr, t):
    """Epoch t (0-based) of the release, written out as the issue states it."""
    if t < 10:
        return 1e-7 + t * (lr - 1e-7) / 10
    if t < 100:
        return 1e-8 + 0.5 * (lr - 1e-8) * (1 + math.cos(math.pi * t / 100))
    return 1e-8


def test_formula_landmarks():
    """A few values by hand: warm-up from the absolute 1e-7, the cosine counts
    the warm-up epochs, then 10 epochs at 1e-8."""
    for lr in (5e-4, 3e-3):
        values = [released_lr(lr, t) for t in range(110)]
        assert values[0] == 1e-7
        assert values[9] == pytest.approx(1e-7 + 0.9 * (lr - 1e-7), rel=1e-12)
        assert values[10] / lr == pytest.approx(0.97553, abs=1e-5)
        assert values[50] == pytest.approx(1e-8 + 0.5 * (lr - 1e-8), rel=1e-12)
        assert values[100:] == [1e-8] * 10


class TinyNet(torch.nn.Module):
    """Weights and biases: two parameter groups under bias_decay_mult=0."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)


def epoch_lrs(cfg, max_epochs=None):
    """Build the config's optimizer wrapper and schedulers as the Runner does
    (``end`` defaults to max_epochs) and step them once per epoch as
    ParamSchedulerHook does; the lr of every group for every epoch."""
    from mmpretrain.registry import PARAM_SCHEDULERS

    max_epochs = max_epochs or cfg.train_cfg.max_epochs
    # AmpOptimWrapper needs a GPU (tools/train.py falls back the same way);
    # the schedule does not depend on the wrapper type.
    optim_cfg = dict(cfg.optim_wrapper, type='OptimWrapper')
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        wrapper = build_optim_wrapper(TinyNet(), optim_cfg)
        schedulers = []
        for scheduler in cfg.param_scheduler:
            scheduler = dict(scheduler)
            scheduler.setdefault('end', max_epochs)
            schedulers.append(PARAM_SCHEDULERS.build(
                scheduler, default_args=dict(optimizer=wrapper, epoch_length=1)))
    lrs = []
    for _ in range(max_epochs):
        lrs.append([group['lr'] for group in wrapper.param_groups])
        wrapper.step()  # no gradients: a no-op update, as mmengine expects the order
        for scheduler in schedulers:
            if scheduler.by_epoch:
                scheduler.step()
    return lrs, wrapper


def check_released(lrs, base_lr):
    assert len(lrs) == 110
    for t, groups in enumerate(lrs):
        assert len(groups) >= 2  # weights and (no-decay) biases
        for value in groups:
            assert value == pytest.approx(released_lr(base_lr, t), rel=1e-12, abs=0), t


# (config, options, lr the config sets)
CONFIGS = [
    ('configs/dtl/vtab/vit-b_dtl+_cifar.py', {}, 5e-4),
    ('configs/dtl/vtab/vit-b_dtl_svhn.py', {}, None),
    ('configs/dtl/vtab/swin-b_dtl+_dtd.py', {}, None),
    ('configs/dtl/vtab/swin-b_dtl_dmlab.py', {}, 3e-3),
    ('configs/dtl/swin-b_vtab-cifar.py', {}, 3e-3),
    ('configs/dtl/domain_generalization/vit-b_dtl+_imagenet-sketch.py', {}, 5e-5),
    ('configs/dtl/domain_generalization/vit-b_dtl_imagenet-r.py', {}, 3e-5),
    # lr_per_shot of the released FGVC-Aircraft DTL+ recipe: 4 shots -> 3e-3
    ('configs/dtl/few_shot/vit-b_dtl+_fgvc-aircraft.py', {'shot': 4}, 3e-3),
    ('configs/dtl/few_shot/vit-b_dtl_food101.py', {'shot': 1}, None),
]


@pytest.mark.parametrize('path,options,config_lr', CONFIGS,
                         ids=[osp.basename(c[0]) for c in CONFIGS])
@pytest.mark.parametrize('override', [None, 2e-3, 7e-5])
def test_real_configs_follow_the_release(path, options, config_lr, override):
    cfg = Config.fromfile(str(REPO / path))
    if override is not None:
        options = {**options, 'optim_wrapper.optimizer.lr': override}
    cfg.merge_from_dict(options)
    if cfg.get('runner_type') == 'FewShotRunner':
        apply_few_shot_options(cfg)  # what FewShotRunner does with shot / lr_per_shot
    assert cfg.train_cfg.max_epochs == 110
    base_lr = cfg.optim_wrapper.optimizer.lr
    assert base_lr > 0
    if override is not None:
        assert base_lr == override
    elif config_lr is not None:
        assert base_lr == config_lr
    lrs, _ = epoch_lrs(cfg)
    check_released(lrs, base_lr)


def test_few_shot_validates_every_10_epochs_up_to_110():
    cfg = Config.fromfile(str(REPO / 'configs/dtl/few_shot/vit-b_dtl_oxford-pets.py'))
    assert cfg.train_cfg.val_interval == 10
    assert cfg.default_hooks.checkpoint.save_best == 'accuracy/top1'


def test_steps_from_begin_and_resumes():
    param = torch.nn.Parameter(torch.zeros(1))
    wrapper = OptimWrapper(torch.optim.SGD([param], lr=0.1))
    scheduler = TimmCosineLR(wrapper, t_initial=20, warmup_t=4, begin=3, end=30)
    values = []
    for _ in range(30):
        values.append(wrapper.param_groups[0]['lr'])
        wrapper.step()
        scheduler.step()
    # before `begin` the optimizer keeps its lr
    assert values[:3] == [0.1] * 3
    expect = [1e-7 + t * ((0.1 - 1e-7) / 4) if t < 4 else
              1e-8 + 0.5 * (0.1 - 1e-8) * (1 + math.cos(math.pi * t / 20)) if t < 20 else 1e-8
              for t in range(27)]
    np.testing.assert_allclose(values[3:], expect, rtol=1e-12)

    # A scheduler restored from the state dict continues where it was.
    state = scheduler.state_dict()
    param2 = torch.nn.Parameter(torch.zeros(1))
    wrapper2 = OptimWrapper(torch.optim.SGD([param2], lr=0.1))
    restored = TimmCosineLR(wrapper2, t_initial=20, warmup_t=4, begin=3, end=30)
    restored.load_state_dict(state)
    assert restored.last_step == scheduler.last_step == 26


def test_convert_to_iter_based():
    from mmpretrain.registry import PARAM_SCHEDULERS

    param = torch.nn.Parameter(torch.zeros(1))
    wrapper = OptimWrapper(torch.optim.SGD([param], lr=0.5))
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        scheduler = PARAM_SCHEDULERS.build(
            dict(type='TimmCosineLR', t_initial=10, warmup_t=2, by_epoch=True,
                 convert_to_iter_based=True),
            default_args=dict(optimizer=wrapper, epoch_length=3))
    assert not scheduler.by_epoch and (scheduler.t_initial, scheduler.warmup_t) == (30, 6)
    values = []
    for _ in range(33):
        values.append(wrapper.param_groups[0]['lr'])
        wrapper.step()
        scheduler.step()
    assert values[3] == pytest.approx(1e-7 + 3 * (0.5 - 1e-7) / 6, rel=1e-12)
    assert values[15] == pytest.approx(1e-8 + 0.5 * (0.5 - 1e-8), rel=1e-12)
    assert values[30:] == [1e-8] * 3


@pytest.mark.parametrize('kwargs,match', [
    (dict(t_initial=0), 't_initial must be >= 1'),
    (dict(warmup_t=-1), 'warmup_t must be an int >= 0'),
    (dict(t_initial=10.5), 't_initial must be an int'),
    (dict(lr_min=-1e-8), 'lr_min must be >= 0'),
])
def test_bad_arguments(kwargs, match):
    param = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(ValueError, match=match):
        TimmCosineLR(OptimWrapper(torch.optim.SGD([param], lr=0.1)), **kwargs)


class RecordHook(Hook):
    """The lr of every group at the start of every epoch, and the epochs
    after which validation ran."""

    def __init__(self):
        self.lrs, self.val_epochs = [], []

    def before_train_epoch(self, runner):
        self.lrs.append(list(runner.optim_wrapper.get_lr()['lr']))

    def after_val_epoch(self, runner, metrics=None):
        self.val_epochs.append(runner.epoch)


def write_toy_few_shot(root, num_classes=5, shot=2):
    """A NOAH-layout tree ``toy``: ``shot`` train, one val, one test image per class."""
    from PIL import Image

    rng = np.random.default_rng(0)
    ann = osp.join(root, 'few-shot_split', 'toy', 'annotations')
    os.makedirs(ann)
    os.makedirs(osp.join(root, 'toy'))
    lists = dict(train=[], val=[], test=[])
    for c in range(num_classes):
        for split, count in (('train', shot), ('val', 1), ('test', 1)):
            for i in range(count):
                name = f'{split}_{c}_{i}.png'
                Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(
                    osp.join(root, 'toy', name))
                lists[split].append(f'{name} {c}\n')
    files = dict(train=f'train_meta.list.num_shot_{shot}.seed_0', val='val_meta.list',
                 test='test_meta.list')
    for split, lines in lists.items():
        with open(osp.join(ann, files[split]), 'w') as f:
            f.writelines(lines)


def test_few_shot_run_end_to_end(tmp_path):
    """The released few-shot config through FewShotRunner (a tiny ViT, one step
    per epoch): the lr of lr_per_shot[2] follows the release for all 110
    epochs, validation runs after epochs 10, 20, ..., 110 and the
    best-validation checkpoint is kept."""
    data = tmp_path / 'data'
    write_toy_few_shot(str(data))
    pipeline = [dict(type='LoadImageFromFilePIL'), dict(type='Resize', scale=(16, 16)),
                dict(type='PackInputs')]
    loader = dict(num_workers=0, persistent_workers=False,
                  dataset=dict(data_root=str(data), name='toy', num_classes=5,
                               pipeline=pipeline))
    cfg = Config.fromfile(str(REPO / 'configs/dtl/few_shot/vit-b_dtl+_oxford-flowers102.py'))
    cfg.merge_from_dict({
        'shot': 2,
        'model.backbone.img_size': 16, 'model.backbone.patch_size': 8,
        'model.backbone.csn': dict(taps=[0, 1], start=1),
        'model.head.in_channels': 16, 'model.head.num_classes': 5,
        'optim_wrapper.type': 'OptimWrapper',
        'train_dataloader': dict(loader, batch_size=10),  # one step per epoch
        'val_dataloader': dict(loader, batch_size=5),
        'test_dataloader': dict(loader, batch_size=5),
        'default_hooks.logger.interval': 1000,
        'default_hooks.checkpoint.interval': 110,  # the last and the best only
        'work_dir': str(tmp_path / 'work'),
    })
    cfg.model.backbone.arch = dict(embed_dims=16, num_layers=2, num_heads=2,
                                   feedforward_channels=32)  # replace, not merge
    # A trunk checkpoint with the real key layout, as a converted one.
    from mmpretrain.registry import MODELS
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        trunk = MODELS.build(cfg.model.backbone)
    torch.save(dict(state_dict=trunk.state_dict()), tmp_path / 'trunk.pth')
    cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=str(tmp_path / 'trunk.pth'))
    runner = RUNNERS.build(cfg)
    hook = RecordHook()
    runner.register_hook(hook)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only contend
    try:
        runner.train()
    finally:
        torch.set_num_threads(threads)

    lr = cfg.lr_per_shot[2]  # released Flowers DTL+ 2-shot lr
    assert runner.cfg.optim_wrapper.optimizer.lr == lr
    check_released(hook.lrs, lr)
    assert hook.val_epochs == list(range(10, 111, 10))
    work = tmp_path / 'work' / 'shot2_seed0'
    assert len(list(work.glob('best_accuracy_top1_epoch_*.pth'))) == 1
    assert (work / 'epoch_110.pth').is_file()
