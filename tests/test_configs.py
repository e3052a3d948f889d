"""Every config under configs/ loads (inheritance resolves) and builds its model."""
from pathlib import Path

import pytest
from mmengine.config import Config
from mmengine.registry import DefaultScope

import mmdtl  # noqa: F401

CONFIG_ROOT = Path(__file__).resolve().parents[1] / 'configs'
CONFIGS = sorted(p for p in CONFIG_ROOT.rglob('*.py') if '_base_' not in p.parts)


def model_registry(scope):
    if scope == 'mmdet':
        import mmdet.models  # noqa: F401  (registers mmdet's modules)
        from mmdet.registry import MODELS
    else:
        from mmpretrain.registry import MODELS
    return MODELS


def test_there_are_configs():
    assert any(p.parent.name == 'dtl' for p in CONFIGS)


@pytest.mark.parametrize('path', CONFIGS, ids=lambda p: str(p.relative_to(CONFIG_ROOT)))
def test_config_builds_model(path):
    cfg = Config.fromfile(str(path))
    assert cfg.custom_imports['imports'] == ['mmdtl']
    scope = cfg.get('default_scope', 'mmpretrain')
    with DefaultScope.overwrite_default_scope(scope):
        model = model_registry(scope).build(cfg.model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    if path.parent.name == 'pretrain' or '_full_' in path.name:
        # pre-training and the demo's full fine-tuning baseline train everything
        assert trainable == total
    else:
        # DTL (and the demo's LoRA / linear baselines) train a small fraction:
        # the side network or adapters, neck and head.
        assert 0 < trainable < 0.5 * total
