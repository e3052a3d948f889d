"""LoadImageFromFilePIL: the release's pixels (torchvision's default_loader +
PIL bicubic resize) to the bit, and unreadable images named in the error."""
import os.path as osp
from pathlib import Path

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import Compose, pseudo_collate
from mmengine.registry import DefaultScope
from PIL import Image
from torchvision import transforms as T
from torchvision.datasets.folder import default_loader
from torchvision.transforms import InterpolationMode

import mmdtl  # noqa: F401  (registers the transform)
from mmdtl.testing import make_vtab_tree

REPO = Path(__file__).resolve().parents[2]


def build(pipeline):
    from mmpretrain.registry import TRANSFORMS
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        return Compose([TRANSFORMS.build(t) for t in pipeline])


@pytest.fixture(scope='module')
def images(tmp_path_factory):
    """Real files written by PIL: JPEGs (one with EXIF Orientation=6, i.e.
    'rotate 90° to display'), a grayscale JPEG, a CMYK JPEG, a grey+alpha
    PNG (mmcv composites it on a grey canvas; PIL does not) and a palette PNG."""
    root = tmp_path_factory.mktemp('images')
    rng = np.random.default_rng(0)
    h, w = 47, 61  # not square: a rotation changes the shape
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = np.stack([xx * 4, yy * 5, (xx + yy) * 2], -1) % 256
    rgb = np.clip(smooth + rng.integers(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    paths = {}

    def save(name, image, **kwargs):
        paths[name] = str(root / name)
        image.save(paths[name], **kwargs)

    save('plain.jpg', Image.fromarray(rgb), quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    save('exif6.jpg', Image.fromarray(rgb), quality=90, exif=exif.tobytes())
    save('gray.jpg', Image.fromarray(rgb[..., 0]), quality=85)
    save('cmyk.jpg', Image.fromarray(rgb).convert('CMYK'), quality=90)
    alpha = rng.integers(0, 256, (h, w), dtype=np.uint8)
    save('gray_alpha.png', Image.fromarray(np.stack([rgb[..., 1], alpha], -1), mode='LA'))
    save('palette.png', Image.fromarray(rgb).convert('P'))
    return paths


def release_pixels(path, *tfms):
    """What the release feeds its prefetcher: default_loader, the torchvision
    transforms, then a uint8 HWC RGB array."""
    return np.array(T.Compose(list(tfms))(default_loader(path)), dtype=np.uint8)


def as_rgb(packed_inputs):
    """PackInputs' CHW tensor of a BGR image -> HWC RGB."""
    return packed_inputs.numpy()[::-1].transpose(1, 2, 0)


def test_exif_image_is_not_rotated(images):
    """The test can fail: the default loaders of mmcv rotate by the EXIF tag."""
    path = images['exif6.jpg']
    assert Image.open(path).getexif()[0x0112] == 6
    assert np.array(default_loader(path)).shape == (47, 61, 3)
    assert build([dict(type='LoadImageFromFile')])(dict(img_path=path))['img'].shape == \
        (61, 47, 3)
    pillow_color = build([dict(type='LoadImageFromFile', imdecode_backend='pillow')])
    assert pillow_color(dict(img_path=path))['img'].shape == (61, 47, 3)
    assert build([dict(type='LoadImageFromFilePIL')])(dict(img_path=path))['img'].shape == \
        (47, 61, 3)


@pytest.mark.parametrize('name', ['plain.jpg', 'exif6.jpg', 'gray.jpg', 'cmyk.jpg',
                                  'gray_alpha.png', 'palette.png'])
def test_decoding_equals_default_loader(images, name):
    path = images[name]
    results = build([dict(type='LoadImageFromFilePIL')])(dict(img_path=path))
    img = results['img']
    assert img.dtype == np.uint8 and img.flags.c_contiguous
    assert results['img_shape'] == results['ori_shape'] == img.shape[:2]
    # BGR, as mmcv's loaders (the data preprocessor's to_rgb=True flips it)
    np.testing.assert_array_equal(img[..., ::-1], np.array(default_loader(path)))
    rgb = build([dict(type='LoadImageFromFilePIL', channel_order='rgb', to_float32=True)])(
        dict(img_path=path))['img']
    assert rgb.dtype == np.float32
    np.testing.assert_array_equal(rgb, np.array(default_loader(path), dtype=np.float32))


def test_gray_alpha_differs_from_mmcv(images):
    """mmcv's pillow path paints LA images on a grey canvas; the release does not."""
    path = images['gray_alpha.png']
    mmcv_img = build([dict(type='LoadImageFromFile', imdecode_backend='pillow',
                           color_type='color_ignore_orientation')])(dict(img_path=path))['img']
    assert not np.array_equal(mmcv_img[..., ::-1], np.array(default_loader(path)))


@pytest.mark.parametrize('config,release', [
    # VTAB-1k: Resize((224, 224), bicubic) (+ CenterCrop(224), a no-op)
    ('configs/_base_/datasets/vtab1k.py',
     [T.Resize((224, 224), interpolation=InterpolationMode.BICUBIC), T.CenterCrop(224)]),
    # few-shot FGVC and domain generalization: Resize((256, 256)) + CenterCrop(224)
    ('configs/_base_/datasets/few_shot.py',
     [T.Resize((256, 256), interpolation=InterpolationMode.BICUBIC), T.CenterCrop(224)]),
    ('configs/_base_/datasets/domain_generalization.py',
     [T.Resize((256, 256), interpolation=InterpolationMode.BICUBIC), T.CenterCrop(224)]),
])
def test_config_test_pipelines_equal_the_release(images, config, release):
    """The configs' own test pipelines, bit for bit, on every image kind."""
    cfg = Config.fromfile(str(REPO / config))
    pipeline = build(cfg.test_dataloader.dataset.pipeline)
    for name, path in images.items():
        out = pipeline(dict(img_path=path, gt_label=0))
        np.testing.assert_array_equal(as_rgb(out['inputs']), release_pixels(path, *release),
                                      err_msg=name)


def test_train_pipeline_vtab_equals_the_release(images):
    cfg = Config.fromfile(str(REPO / 'configs/_base_/datasets/vtab1k.py'))
    pipeline = build(cfg.train_dataloader.dataset.pipeline)
    path = images['exif6.jpg']
    np.testing.assert_array_equal(
        as_rgb(pipeline(dict(img_path=path, gt_label=0))['inputs']),
        release_pixels(path, T.Resize((224, 224), interpolation=InterpolationMode.BICUBIC)))


def test_unreadable_images_are_named(tmp_path):
    load = build([dict(type='LoadImageFromFilePIL')])
    empty = tmp_path / 'empty.jpg'
    empty.write_bytes(b'')
    with pytest.raises(OSError, match=rf'{empty} is empty \(0 bytes\).*replace or remove'):
        load(dict(img_path=str(empty)))
    garbage = tmp_path / 'garbage.jpg'
    garbage.write_bytes(b'not an image at all' * 10)
    with pytest.raises(OSError, match=rf'cannot decode image {garbage} \(190 bytes\)'):
        load(dict(img_path=str(garbage)))
    truncated = tmp_path / 'truncated.jpg'
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(tmp_path / 'whole.jpg')
    truncated.write_bytes((tmp_path / 'whole.jpg').read_bytes()[:300])
    with pytest.raises(OSError, match=rf'cannot decode image {truncated}'):
        load(dict(img_path=str(truncated)))
    with pytest.raises(OSError, match=rf'cannot read image {tmp_path / "missing.jpg"}'):
        load(dict(img_path=str(tmp_path / 'missing.jpg')))
    # ignore_empty: None, as mmcv's loader (a dataset then draws another sample)
    lenient = build([dict(type='LoadImageFromFilePIL', ignore_empty=True)])
    assert lenient(dict(img_path=str(empty))) is None
    with pytest.raises(ValueError, match="channel_order must be 'bgr' or 'rgb'"):
        build([dict(type='LoadImageFromFilePIL', channel_order='hsv')])


def test_zero_byte_image_in_a_worker_names_the_file(tmp_path):
    """A zero-byte image of a real VTAB-1k dataset, read by a dataloader worker
    during training: the error the main process sees names the file."""
    from mmpretrain.registry import DATASETS

    make_vtab_tree(str(tmp_path), task='cifar', sizes=dict(train800=3, val200=1, test=1),
                   image_size=8)
    bad = osp.join(str(tmp_path), 'cifar', 'images', 'train800', '000001.png')
    open(bad, 'wb').close()
    cfg = Config.fromfile(str(REPO / 'configs/_base_/datasets/vtab1k.py'))
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        dataset = DATASETS.build(dict(cfg.train_dataloader.dataset, data_root=str(tmp_path),
                                      split='train800'))
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=1,
                                         collate_fn=pseudo_collate)
    with pytest.raises(OSError, match=rf'(?s)DataLoader worker.*{bad} is empty \(0 bytes\)'):
        next(iter(loader))
