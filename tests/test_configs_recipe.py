"""The released recipe in the configs: head init, fp16 evaluation (fp32 on
CPU), and one domain-generalization config per target with its own lr."""
import math
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope

import mmdtl  # noqa: F401
from mmdtl.datasets.domain_generalization import DG_TARGETS, canonical_dg_name
from mmdtl.engine.launch import setup_amp, setup_eval_fp16

REPO = Path(__file__).resolve().parents[1]
DG = REPO / 'configs/dtl/domain_generalization'


def timm_trunc_normal_(tensor, std):
    """timm 0.5.4's trunc_normal_(tensor, std=std) (a=-2, b=2: absolute bounds,
    100 sigma at std 0.02): inverse-CDF sampling of a uniform draw."""
    lo = (1. + math.erf(-2. / std / math.sqrt(2.))) / 2.
    hi = (1. + math.erf(2. / std / math.sqrt(2.))) / 2.
    with torch.no_grad():
        tensor.uniform_(2 * lo - 1, 2 * hi - 1).erfinv_().mul_(std * math.sqrt(2.))
        return tensor.clamp_(min=-2., max=2.)


@pytest.mark.parametrize('config', [
    'configs/dtl/vit-b_vtab-cifar.py',
    'configs/dtl/vtab/vit-b_dtl_dtd.py',
    'configs/dtl/few_shot/vit-b_dtl+_food101.py',
    'configs/dtl/domain_generalization/vit-b_dtl+_imagenet-a.py',
    'configs/dtl/swin-b_vtab-cifar.py',
])
def test_head_init_is_the_release(config):
    """The head of the built model: the same draws as timm's trunc_normal_
    (std 0.02) from the same RNG state, and a zero bias."""
    from mmpretrain.registry import MODELS

    cfg = Config.fromfile(str(REPO / config))
    cfg.model.backbone.init_cfg = None  # no converted weights here; the head is what counts
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        head = MODELS.build(cfg.model.head)
    torch.manual_seed(7)
    head.init_weights()
    torch.manual_seed(7)
    expected = timm_trunc_normal_(torch.empty_like(head.fc.weight), std=0.02)
    assert torch.equal(head.fc.weight, expected)
    assert torch.count_nonzero(head.fc.bias) == 0
    assert head.fc.weight.std().item() == pytest.approx(0.02, rel=0.1)  # not mmpretrain's 0.01


def test_vit_model_head_init_in_the_built_classifier():
    """ImageClassifier.init_weights of the real ViT-B config initialises its head so."""
    from mmpretrain.registry import MODELS

    cfg = Config.fromfile(str(REPO / 'configs/dtl/vtab/vit-b_dtl+_cifar.py'))
    # a small trunk (fast); the head config is the real one
    cfg.model.backbone.update(
        arch=dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64),
        img_size=32, init_cfg=None, csn=dict(cfg.model.backbone.csn, taps=[0, 1], start=1))
    cfg.model.head.in_channels = 32
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        model = MODELS.build(cfg.model)
    model.init_weights()
    weight, bias = model.head.fc.weight, model.head.fc.bias
    assert tuple(weight.shape) == (100, 32)
    assert torch.count_nonzero(bias) == 0
    assert weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert weight.abs().max().item() < 0.02 * 6  # a normal, not a wide uniform


@pytest.mark.parametrize('config', [
    'configs/dtl/vtab/swin-b_dtl+_kitti.py',
    'configs/dtl/few_shot/vit-b_dtl_oxford-pets.py',
    'configs/dtl/domain_generalization/vit-b_dtl_imagenet.py',
])
def test_evaluation_fp16_on_gpu_fp32_on_cpu(config):
    """The configs evaluate under fp16 autocast (the release's validate());
    the tools turn it off where there is no GPU, saying so."""
    cfg = Config.fromfile(str(REPO / config))
    assert cfg.test_cfg.fp16 is True
    assert cfg.val_cfg is None or cfg.val_cfg.fp16 is True

    gpu_cfg, notes = Config.fromfile(str(REPO / config)), []
    setup_eval_fp16(gpu_cfg, notes, gpu=True)
    assert gpu_cfg.test_cfg.fp16 is True and notes == []

    notes = []
    setup_amp(cfg, False, notes, gpu=False)  # what tools/train.py runs on CPU
    assert cfg.test_cfg.fp16 is False
    assert cfg.val_cfg is None or cfg.val_cfg.fp16 is False
    assert cfg.optim_wrapper.type == 'OptimWrapper'
    assert any('test_cfg.fp16' in n and 'fp32' in n for n in notes)


# The release's lr per target (train_scripts/vit/domain_generalization/<target>/*.sh).
DG_LR = {'imagenet': 1e-4, 'imagenet-v2': 1e-4, 'imagenet-sketch': 5e-5, 'imagenet-a': 8e-5,
         'imagenet-r': 3e-5}


@pytest.mark.parametrize('method,dwconv', [('dtl+', 3), ('dtl', 0)])
@pytest.mark.parametrize('target', list(DG_LR))
def test_dg_config_per_target(method, dwconv, target):
    cfg = Config.fromfile(str(DG / f'vit-b_{method}_{target}.py'))
    assert cfg.optim_wrapper.optimizer.lr == DG_LR[target]
    assert cfg.model.backbone.csn.dwconv_kernel == dwconv
    assert cfg.model.backbone.csn.rank == 2 and cfg.model.backbone.drop_path_rate == 0
    assert cfg.model.head.num_classes == 1000
    train = cfg.train_dataloader.dataset
    assert (train.type, train.name, train.split, cfg.shot) == \
        ('DomainGeneralization', 'imagenet', 'train', 16)
    test = cfg.test_dataloader.dataset
    assert canonical_dg_name(test.name) == canonical_dg_name(target)  # its own target only
    assert cfg.train_cfg.max_epochs == 110 and cfg.val_cfg is None  # last epoch tested
    assert cfg.runner_type == 'FewShotRunner'


def test_dg_configs_cover_the_paper():
    """Exactly one config per target and method in the default suite's folder."""
    names = sorted(p.name for p in DG.glob('*.py'))
    assert names == sorted(f'vit-b_{m}_{t}.py' for m in ('dtl', 'dtl+') for t in DG_LR)
    assert {canonical_dg_name(t) for t in DG_LR} == set(DG_TARGETS)


@pytest.mark.parametrize('method,dwconv', [('dtl+', 3), ('dtl', 0)])
def test_dg_all_targets_option(method, dwconv):
    cfg = Config.fromfile(str(DG / 'all_targets' / f'vit-b_{method}_all-targets.py'))
    assert list(cfg.test_dataloader.dataset.name) == list(DG_TARGETS)
    assert cfg.optim_wrapper.optimizer.lr == 1e-4
    assert cfg.model.backbone.csn.dwconv_kernel == dwconv
    assert cfg.test_evaluator.type == 'MaskedAccuracy'
