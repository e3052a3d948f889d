"""Every image decode path names the file on failure: the configs' mmcv loader
(`LoadImageFromFile`, the demo and smoke configs) too, while mmpretrain's
inferencer still strips it from the test pipeline."""
from pathlib import Path

import numpy as np
import pytest
from mmengine.config import Config
from mmengine.registry import DefaultScope
from PIL import Image

import mmdtl  # noqa: F401  (registers the transforms)
from mmdtl.testing import make_vtab_tree

REPO = Path(__file__).resolve().parents[2]
SMOKE = 'configs/dtl/vit-demo_digits.py'
DEMO = 'configs/demo/vit-demo_dtl_digits.py'  # grayscale: configs/demo/_base_/mini-vtab_vit-demo.py


@pytest.fixture
def digits(tmp_path):
    make_vtab_tree(str(tmp_path), task='digits', num_classes=10,
                   sizes=dict(train800=2, val200=1, test=2), image_size=16)
    return tmp_path


def build_dataset(config, root, scope='mmpretrain'):
    from mmpretrain.registry import DATASETS
    cfg = Config.fromfile(str(REPO / config))
    with DefaultScope.overwrite_default_scope(scope):
        return DATASETS.build(dict(cfg.test_dataloader.dataset, data_root=str(root)))


@pytest.mark.parametrize('config', [SMOKE, DEMO])
@pytest.mark.parametrize('fault', ['empty', 'garbage'])
def test_config_loader_names_the_file(digits, config, fault):
    bad = digits / 'digits' / 'images' / 'test' / '000000.png'
    if fault == 'empty':  # cv2 failed with "!buf.empty() in function 'imdecode_'"
        bad.write_bytes(b'')
        expected = f'image file {bad} is empty (0 bytes)'
    else:  # mmcv: an AssertionError
        bad.write_bytes(b'not a png' * 10)
        expected = f'cannot decode image {bad} (90 bytes)'
    dataset = build_dataset(config, digits)
    with pytest.raises(OSError) as info:
        dataset[0]
    msg = str(info.value)
    assert expected in msg and 'LoadImageFromFile' in msg, msg
    assert 'tools/check_data.py' in msg
    assert dataset[1]['inputs'].ndim == 3  # the others still load


def test_loader_keeps_mmcv_decoding_and_ignore_empty(digits):
    """Same pixels and options as mmcv's LoadImageFromFile (grayscale too)."""
    from mmcv.transforms import LoadImageFromFile as MMCVLoader
    from mmpretrain.registry import TRANSFORMS
    path = str(digits / 'digits' / 'images' / 'test' / '000001.png')
    for kwargs in (dict(), dict(color_type='grayscale'), dict(to_float32=True)):
        with DefaultScope.overwrite_default_scope('mmpretrain'):
            ours = TRANSFORMS.build(dict(type='LoadImageFromFile', **kwargs))
        assert type(ours) is not MMCVLoader and isinstance(ours, MMCVLoader)
        np.testing.assert_array_equal(ours(dict(img_path=path))['img'],
                                      MMCVLoader(**kwargs)(dict(img_path=path))['img'])
    empty = digits / 'empty.png'
    empty.write_bytes(b'')
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        lenient = TRANSFORMS.build(dict(type='LoadImageFromFile', ignore_empty=True))
    assert lenient(dict(img_path=str(empty))) is None


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_dense_scopes_name_the_file_too(tmp_path, scope):
    registry = pytest.importorskip(f'{scope}.registry')
    empty = tmp_path / 'scene.png'
    empty.write_bytes(b'')
    with DefaultScope.overwrite_default_scope(scope):
        load = registry.TRANSFORMS.build(dict(type='LoadImageFromFile', color_type='grayscale'))
    with pytest.raises(OSError, match=f'image file {empty} is empty'):
        load(dict(img_path=str(empty)))


def test_inferencer_still_strips_the_loader(digits):
    """mmpretrain's ImageClassificationInferencer removes the type
    'LoadImageFromFile' and feeds decoded arrays: still so."""
    from mmpretrain.apis import ImageClassificationInferencer
    inferencer = ImageClassificationInferencer(str(REPO / SMOKE), pretrained=False)
    assert not any('LoadImage' in type(t).__name__ for t in inferencer.pipeline.transforms)
    path = digits / 'digits' / 'images' / 'test' / '000001.png'
    for image in (str(path), np.asarray(Image.open(path))[..., ::-1].copy()):
        result = inferencer(image)[0]
        assert 0 <= result['pred_label'] < 10
