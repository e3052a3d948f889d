"""mmdtl.apis.train / test: the tools' jobs from Python, on the smoke config
(tiny data, CPU)."""
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image

from mmdtl.apis import MultiTaskInferencer, test, train
from mmdtl.engine.launch import LaunchError
from mmdtl.testing import make_vtab_tree

REPO = Path(__file__).resolve().parents[2]
CONFIG = 'configs/dtl/vit-demo_digits.py'


def data_options(root) -> dict:
    """The demo on a generated digits tree: 4 images a batch, one process."""
    options = {}
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        options.update({f'{loader}.dataset.data_root': str(root), f'{loader}.batch_size': 4,
                        f'{loader}.num_workers': 0, f'{loader}.persistent_workers': False})
    return options


@pytest.fixture
def digits(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    # 8 + 4 training images: 3 iterations of 4 in an epoch; 6 test images
    make_vtab_tree(str(tmp_path / 'data'), task='digits', num_classes=10,
                   sizes=dict(train800=8, val200=4, test=6), image_size=32)
    return tmp_path / 'data'


def test_train_one_epoch_then_test_and_serve_the_checkpoint(digits, tmp_path):
    """The examples of docs/python_api.md, on the smoke config."""
    work_dir = tmp_path / 'work'
    options = dict(data_options(digits), **{'train_cfg.max_epochs': 1,
                                            'default_hooks.checkpoint.interval': 1,
                                            'randomness.seed': 0,
                                            'custom_hooks': [dict(type='TaskCheckpointHook')]})
    runner = train(CONFIG, work_dir=str(work_dir), cfg_options=options)
    assert (runner.epoch, runner.iter) == (1, 3)
    checkpoint = work_dir / 'epoch_1.pth'
    state = torch.load(checkpoint, map_location='cpu', weights_only=True)['state_dict']
    assert any(k.startswith('backbone.csn.') for k in state) and 'head.fc.weight' in state
    # The batch line of tools/train.py, in the run's log.
    log = next(work_dir.glob('*/*.log')).read_text()
    assert 'Batch: global 4 = 1 process(es) x 4 per process (train_dataloader.batch_size ' \
        'per process, from --cfg-options); lr 0.005' in log

    out = tmp_path / 'predictions.pkl'
    metrics = test(CONFIG, str(checkpoint), work_dir=str(tmp_path / 'test'),
                   cfg_options=data_options(digits), out=str(out))
    assert set(metrics) >= {'accuracy/top1'} and 0 <= metrics['accuracy/top1'] <= 100
    with open(out, 'rb') as f:
        assert len(pickle.load(f)) == 6  # one prediction per test image

    # mmpretrain's own APIs on the config and the checkpoint ...
    from mmpretrain.apis import ImageClassificationInferencer, get_model
    model = get_model(CONFIG, pretrained=str(checkpoint))
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    image = str(digits / 'digits' / 'images' / 'test' / '000000.png')
    inferencer = ImageClassificationInferencer(CONFIG, pretrained=str(checkpoint))
    result = inferencer(image)[0]
    assert 0 <= result['pred_label'] < 10 and len(result['pred_scores']) == 10
    pixels = np.asarray(Image.open(image))[..., ::-1]  # BGR, as mmcv reads it
    from_array = inferencer(np.ascontiguousarray(pixels))[0]
    assert from_array['pred_label'] == result['pred_label']
    assert from_array['pred_score'] == pytest.approx(result['pred_score'], abs=1e-6)
    # ... and the task file served on the frozen backbone: the same prediction.
    served = MultiTaskInferencer(CONFIG, str(checkpoint),
                                 {'digits': str(work_dir / 'task_final.pth')})([image], topk=1)
    (label, score), = served[0]['digits']
    assert label == result['pred_class']
    assert score == pytest.approx(result['pred_score'], abs=1e-6)


def test_errors_are_exceptions_not_exits(digits, tmp_path):
    with pytest.raises(LaunchError, match='^Config file not found: configs/dtl/none.py$'):
        train('configs/dtl/none.py')
    cfg = Config.fromfile(CONFIG)
    with pytest.raises(LaunchError, match='^Checkpoint not found: '):
        test(cfg, str(tmp_path / 'none.pth'), cfg_options=data_options(digits))
    with pytest.raises(LaunchError, match=r"^--out must end with \.pkl or \.pickle, got 'p.txt'"):
        test(cfg, str(tmp_path / 'none.pth'), out='p.txt')
