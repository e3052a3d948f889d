"""The libraries' own client APIs on every shipped config family.

mmpretrain's ``ImageClassificationInferencer`` and ``get_model`` on the VTAB,
few-shot, domain-generalization and demo configs, mmdet's ``DetInferencer``
on the mmdet configs and mmseg's ``MMSegInferencer`` on the mmseg configs,
each on an image path and on an array. The models are the shipped configs,
shrunk by size overrides only (arch, heads, test resize); their checkpoints
are written here. Every prediction is compared with the one the config's own
test pipeline gives (what ``tools/test.py`` feeds the model), and every
shipped config shares its pipeline, preprocessor and model type with one
that is tested.
"""
import copy
import importlib
import json
from pathlib import Path

import cv2
import mmcv
import numpy as np
import pytest
import torch
from mmcv.transforms import LoadImageFromFile as MMCVLoadImageFromFile
from mmengine.config import Config
from mmengine.dataset import Compose, pseudo_collate
from PIL import Image

import mmdtl  # noqa: F401  (registers mmdtl's modules)
from mmdtl.datasets.transforms import LoadImageFromFilePIL, ToGrayscale

REPO = Path(__file__).resolve().parents[2]


def shrink(cfg: Config, overrides: dict) -> Config:
    """``cfg`` with the size overrides (an arch dict replaces an arch name)."""
    overrides = dict(overrides)
    if 'model.backbone.arch' in overrides:
        cfg.model.backbone.arch = overrides.pop('model.backbone.arch')
    cfg.merge_from_dict(overrides)
    return cfg


def load(path: str, overrides: dict) -> Config:
    return shrink(Config.fromfile(str(REPO / path)), overrides)


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Distinct non-zero weights everywhere (the side network's B starts at
    zero), so that every part of the model shows in its outputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)


def write_image(path: Path, mode: str = 'RGB', size=(37, 29), **save_args) -> np.ndarray:
    """A textured image in PIL ``mode``, PNG or JPEG by the suffix; returns
    the pixels as the file holds them (RGB or L)."""
    rng = np.random.default_rng(len(path.name))
    yy, xx = np.mgrid[0:size[1], 0:size[0]]
    base = np.stack([xx * 7, yy * 9, (xx + yy) * 5], -1) % 256
    pixels = np.clip(base + rng.normal(0, 25, base.shape), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    if path.suffix == '.jpg':
        save_args.setdefault('quality', 90)
    image.save(path, **save_args)
    with Image.open(path) as saved:
        return np.asarray(saved.convert('L' if mode == 'L' else 'RGB'))


# ------------------------------------------------------------------ decoding
@pytest.mark.parametrize('name,mode,save_args', [
    ('rgb.png', 'RGB', {}), ('grey.png', 'L', {}), ('palette.png', 'P', {}),
    ('rgba.png', 'RGBA', {}), ('420.jpg', 'RGB', {'subsampling': 2}),
    ('444.jpg', 'RGB', {'subsampling': 0, 'quality': 95}), ('grey.jpg', 'L', {}),
    ('progressive.jpg', 'RGB', {'progressive': True})])
def test_inferencer_decodes_paths_as_the_recipes(name, mode, save_args, tmp_path):
    """ImageClassificationInferencer decodes a path itself, with mmcv's
    imread (cv2, colour, BGR), before the pipeline; on 8-bit PNG and
    baseline/progressive JPEG files that is the recipe's PIL decoding, bit
    for bit."""
    path = tmp_path / name
    write_image(path, mode, **save_args)
    recipe = LoadImageFromFilePIL()(dict(img_path=str(path)))['img']
    np.testing.assert_array_equal(mmcv.imread(str(path)), recipe)


def test_inferencer_decoding_differs_on_exif_rotation(tmp_path):
    """Not on a JPEG with an EXIF orientation: cv2 turns it upright, the
    release (and LoadImageFromFilePIL) does not. An array decoded by
    LoadImageFromFilePIL gives the recipe's pixels on any file."""
    path = tmp_path / 'rotated.jpg'
    exif = Image.new('RGB', (1, 1)).getexif()
    exif[0x0112] = 6  # rotate 90 degrees to display
    write_image(path, 'RGB', size=(37, 29), exif=exif.tobytes())
    recipe = LoadImageFromFilePIL()(dict(img_path=str(path)))['img']
    assert recipe.shape == (29, 37, 3) and mmcv.imread(str(path)).shape == (37, 29, 3)


def test_loaders_keep_decoded_arrays_and_make_grey():
    bgr = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    kept = LoadImageFromFilePIL()(dict(img=bgr))
    assert kept['img'] is bgr and kept['img_shape'] == kept['ori_shape'] == (5, 6)
    assert LoadImageFromFilePIL(to_float32=True)(dict(img=bgr))['img'].dtype == np.float32
    with pytest.raises(KeyError, match='LoadImageFromFilePIL: the result has neither an '
                       'img_path to read nor an img array'):
        LoadImageFromFilePIL()(dict(img_shape=(5, 6)))

    grey = ToGrayscale()(dict(img=bgr))['img']
    assert grey.shape == (5, 6) and grey.dtype == np.uint8
    np.testing.assert_array_equal(grey, cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
    rgb = np.ascontiguousarray(bgr[..., ::-1])
    np.testing.assert_array_equal(ToGrayscale(channel_order='rgb')(dict(img=rgb))['img'], grey)
    one = bgr[..., :1]
    assert ToGrayscale()(dict(img=one))['img'] is one  # already one channel
    with pytest.raises(ValueError, match=r'ToGrayscale: expected a grey \(H, W\) or BGR '
                       r'\(H, W, 3\) image, got shape \(5, 6, 4\) \(an array\)'):
        ToGrayscale()(dict(img=np.zeros((5, 6, 4), np.uint8)))


def test_demo_pipeline_unchanged_on_its_grey_images(tmp_path):
    """The demo's pipeline with ToGrayscale gives its own grey PNGs (as
    tools/misc/make_mini_vtab.py writes them) bit for bit as before, in
    training and testing; a colour decode of them turns into the same grey."""
    from mmpretrain.registry import TRANSFORMS

    cfg = Config.fromfile(str(REPO / 'configs/demo/vit-demo_dtl_digits.py'))
    before = Compose([MMCVLoadImageFromFile(color_type='grayscale'),
                      TRANSFORMS.build(dict(type='PackInputs'))])
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (28, 28), dtype=np.uint8), np.zeros((28, 28), np.uint8),
              np.full((28, 28), 255, np.uint8), np.arange(784).reshape(28, 28) % 256]
    for i, pixels in enumerate(images):
        path = str(tmp_path / f'{i:05d}.png')
        Image.fromarray(pixels.astype(np.uint8)).save(path, format='PNG')
        old = before(dict(img_path=path))['inputs']
        for loader in ('train_dataloader', 'test_dataloader'):
            steps = cfg[loader].dataset.pipeline
            assert [t['type'] for t in steps] == ['LoadImageFromFile', 'ToGrayscale', 'PackInputs']
            new = Compose([TRANSFORMS.build(t) for t in steps])(dict(img_path=path))['inputs']
            assert new.dtype == old.dtype == torch.uint8 and new.shape == (1, 28, 28)
            assert torch.equal(new, old)
        inferred = ToGrayscale()(dict(img=mmcv.imread(path)))['img']  # a path, inferencer
        assert torch.equal(torch.from_numpy(inferred)[None], old)


# ------------------------------------------------------------ classification
VIT_TINY = {'model.backbone.arch': dict(embed_dims=32, num_layers=4, num_heads=2,
                                        feedforward_channels=64),
            'model.backbone.csn.taps': [0, 1, 2, 3], 'model.backbone.csn.start': 2,
            'model.head.in_channels': 32}
SWIN_TINY = {'model.backbone.arch': dict(embed_dims=16, depths=[2, 2, 2, 2],
                                         num_heads=[1, 1, 2, 2]),
             'model.backbone.csn.taps': [4, 5, 6, 7], 'model.backbone.csn.start': 5,
             'model.head.in_channels': 128}
# One config of each family (test_every_config_is_represented), with its
# size overrides.
CLASSIFICATION = {
    # the recipes: RGB images decoded with PIL (LoadImageFromFilePIL)
    'configs/dtl/vit-b_vtab-cifar.py': VIT_TINY,
    'configs/dtl/swin-b_vtab-cifar.py': SWIN_TINY,
    'configs/dtl/few_shot/vit-b_dtl+_fgvc-aircraft.py': VIT_TINY,
    'configs/dtl/domain_generalization/all_targets/vit-b_dtl+_all-targets.py': VIT_TINY,
    # the smoke config: RGB, mmcv's loader
    'configs/dtl/vit-demo_digits.py': {},
    # the demo: 1-channel 28x28 models (ViT and other trunks), already small
    'configs/demo/vit-demo_dtl_digits.py': {},
    'configs/demo/vit-demo_full_digits.py': {},
    'configs/demo/vit-demo_lora_digits.py': {},
    'configs/demo/beit-demo_dtl+random-trunk_digits.py': {},
    'configs/demo/convnext-demo_dtl+random-trunk_digits.py': {},
    'configs/demo/deit3-demo_dtl+random-trunk_digits.py': {},
    'configs/demo/eva02-demo_dtl+random-trunk_digits.py': {},
}


def pipeline_scores(cfg: Config, model, path: Path) -> torch.Tensor:
    """What tools/test.py gives: the config's test pipeline (its own loader
    on the path) and the model's test step."""
    from mmpretrain.registry import TRANSFORMS

    pipeline = Compose([TRANSFORMS.build(t) for t in cfg.test_dataloader.dataset.pipeline])
    with torch.no_grad():
        sample, = model.test_step(pseudo_collate([pipeline(dict(img_path=str(path)))]))
    return sample.pred_score


@pytest.mark.parametrize('path', list(CLASSIFICATION))
def test_image_classification_inferencer(path, tmp_path):
    from mmengine.registry import init_default_scope
    from mmpretrain.apis import ImageClassificationInferencer, get_model

    init_default_scope('mmpretrain')
    cfg = load(path, CLASSIFICATION[path])
    grey = len(cfg.data_preprocessor.mean) == 1  # the demo's 1-channel models
    model = get_model(cfg)
    randomize(model)
    classes = [f'c{i}' for i in range(cfg.model.head.num_classes)]
    checkpoint = tmp_path / 'model.pth'
    torch.save({'state_dict': model.state_dict(),
                'meta': {'dataset_meta': {'classes': classes}}}, checkpoint)

    # get_model: the config's own model classes, the checkpoint's weights
    loaded = get_model(cfg, pretrained=str(checkpoint))
    assert type(loaded.backbone).__name__ == cfg.model.backbone.type
    saved = model.state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in loaded.state_dict().items())

    inferencer = ImageClassificationInferencer(cfg, pretrained=str(checkpoint))
    image = tmp_path / 'image.png'
    pixels = write_image(image, 'L' if grey else 'RGB', size=(28, 28) if grey else (37, 29))
    expected = pipeline_scores(cfg, loaded, image)
    # a path, and arrays as mmcv reads images (BGR; the demo: grey, and the
    # colour array a path of the grey file decodes to)
    inputs = [str(image), np.ascontiguousarray(pixels if grey else pixels[..., ::-1])]
    if grey:
        inputs.append(np.repeat(pixels[..., None], 3, axis=2))
    results = inferencer(inputs, batch_size=len(inputs))
    assert len(results) == len(inputs)
    for result in results:
        assert result['pred_class'] == classes[int(expected.argmax())]
        torch.testing.assert_close(torch.as_tensor(result['pred_scores']), expected,
                                   rtol=0, atol=1e-6)


# --------------------------------------------------------- mmdet and mmseg
def tiny_trunk(cfg: Config) -> dict:
    """A tiny trunk with a side network that fits it (as tests/test_mmdet)."""
    if 'Swin' in cfg.model.backbone.type:
        return {'model.backbone.arch': dict(embed_dims=16, depths=[2, 2, 2, 2],
                                            num_heads=[1, 1, 2, 2]),
                'model.backbone.window_size': 4,
                'model.backbone.csn.taps': [4, 5, 6, 7], 'model.backbone.csn.start': 5}
    return {'model.backbone.arch': dict(embed_dims=32, num_layers=4, num_heads=2,
                                        feedforward_channels=64),
            'model.backbone.img_size': 64,
            'model.backbone.csn.taps': [0, 1, 2, 3], 'model.backbone.csn.start': 2}


def tiny_detector(cfg: Config) -> dict:
    """Narrow neck and heads; every detection kept (score_thr 0), so that an
    untrained model has predictions to compare."""
    if 'Swin' in cfg.model.backbone.type:
        neck = {'model.neck.in_channels': [16 * 2**i for i in cfg.model.backbone.out_indices]}
    else:
        neck = {'model.neck.backbone_channel': 32, 'model.neck.in_channels': [8, 16, 32, 32]}
    neck['model.neck.out_channels'] = 32
    if cfg.model.type == 'RetinaNet':
        return {**neck, 'model.bbox_head.in_channels': 32, 'model.bbox_head.feat_channels': 32,
                'model.bbox_head.stacked_convs': 1,
                'model.test_cfg.score_thr': 0.0, 'model.test_cfg.max_per_img': 20}
    heads = {
        'model.rpn_head.in_channels': 32, 'model.rpn_head.feat_channels': 32,
        'model.roi_head.bbox_roi_extractor.out_channels': 32,
        'model.roi_head.bbox_head.in_channels': 32, 'model.roi_head.bbox_head.fc_out_channels': 64,
        'model.roi_head.mask_roi_extractor.out_channels': 32,
        'model.roi_head.mask_head.in_channels': 32,
        'model.roi_head.mask_head.conv_out_channels': 32, 'model.roi_head.mask_head.num_convs': 1,
        'model.test_cfg.rpn.nms_pre': 200, 'model.test_cfg.rpn.max_per_img': 50,
        'model.test_cfg.rcnn.score_thr': 0.0, 'model.test_cfg.rcnn.max_per_img': 20,
    }
    if 'conv_out_channels' in cfg.model.roi_head.bbox_head:  # ViTDet's 4conv1fc head
        heads['model.roi_head.bbox_head.conv_out_channels'] = 32
    return {**neck, **heads}


def tiny_segmentor(cfg: Config) -> dict:
    """Narrow neck and heads (as tests/test_mmseg)."""
    heads = {'model.decode_head.channels': 32, 'model.auxiliary_head.channels': 16}
    if 'Swin' in cfg.model.backbone.type:
        return {**heads, 'model.decode_head.in_channels': [16, 32, 64, 128],
                'model.auxiliary_head.in_channels': 64}
    return {**heads, 'model.backbone.out_indices': (0, 1, 2, 3),
            'model.neck.in_channels': [32, 32, 32, 32], 'model.neck.out_channels': 32,
            'model.decode_head.in_channels': [32, 32, 32, 32],
            'model.auxiliary_head.in_channels': 32}


# One config of each family (test_every_config_is_represented).
DETECTION = ['configs/mmdet/retinanet_dtl+-swin-t-p4-w7_fpn_1x_coco.py',
             'configs/mmdet/mask-rcnn_dtl+-swin-t-p4-w7_fpn_1x_coco.py',
             'configs/mmdet/mask-rcnn_dtl+-vit-b_simplefpn_1x_coco.py']
SEGMENTATION = ['configs/mmseg/upernet_dtl+-vit-b16-mln_8xb2-160k_ade20k-512x512.py',
                'configs/mmseg/upernet_dtl+-swin-b-p4-w7_8xb2-160k_ade20k-512x512.py']
SMALL_TEST_RESIZE = {'test_dataloader.dataset.pipeline.1.scale': (80, 64)}


def load_dense(path: str, tiny_heads) -> Config:
    cfg = Config.fromfile(str(REPO / path))
    return shrink(cfg, {**tiny_trunk(cfg), **tiny_heads(cfg), **SMALL_TEST_RESIZE})


def dense_checkpoint(cfg: Config, scope: str, path: Path, meta: dict) -> None:
    """The whole model, randomised, saved as a training run saves it."""
    from mmengine.registry import DefaultScope, init_default_scope

    registry = importlib.import_module(f'{scope}.registry').MODELS
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.backbone.init_cfg = None  # no pre-trained file: the checkpoint holds all
    init_default_scope(scope)
    with DefaultScope.overwrite_default_scope(scope):
        torch.manual_seed(0)
        model = registry.build(model_cfg)
    randomize(model)
    torch.save({'state_dict': model.state_dict(), 'meta': {'dataset_meta': meta}}, path)


def dense_reference(cfg: Config, scope: str, model, path: Path, drop=(), **extra):
    """The config's own test pipeline (its loader on the path; without the
    label steps ``drop``: there is no label file) and test step."""
    from mmengine.registry import DefaultScope

    registry = importlib.import_module(f'{scope}.registry').TRANSFORMS
    steps = [t for t in cfg.test_dataloader.dataset.pipeline if t['type'] not in drop]
    with DefaultScope.overwrite_default_scope(scope):
        pipeline = Compose([registry.build(t) for t in steps])
        data = pipeline(dict(img_path=str(path), **extra))
        with torch.no_grad():
            return model.test_step(pseudo_collate([data]))[0]


@pytest.mark.parametrize('path', DETECTION)
def test_det_inferencer(path, tmp_path):
    pytest.importorskip('mmdet')
    from mmdet.apis import DetInferencer

    cfg = load_dense(path, tiny_detector)
    checkpoint = tmp_path / 'model.pth'
    dense_checkpoint(cfg, 'mmdet', checkpoint, {'classes': tuple(f'c{i}' for i in range(80))})
    inferencer = DetInferencer(cfg, weights=str(checkpoint), device='cpu', show_progress=False)
    assert type(inferencer.model.backbone).__name__ == cfg.model.backbone.type.split('.')[-1]

    image = tmp_path / 'image.png'
    write_image(image, size=(96, 72))
    expected = dense_reference(cfg, 'mmdet', inferencer.model, image, img_id=0).pred_instances
    assert len(expected) > 0
    for inputs in (str(image), cv2.imread(str(image))):  # a path, an array (BGR)
        result = inferencer(inputs, return_datasamples=True)['predictions'][0]
        assert result.ori_shape == (72, 96)
        for key in ('bboxes', 'scores', 'labels') + (('masks',) if 'masks' in expected else ()):
            torch.testing.assert_close(result.pred_instances[key], expected[key],
                                       rtol=0, atol=1e-4)


# CheckSegLabels stays in the pipeline MMSegInferencer builds without
# LoadAnnotations: it must pass a result without gt_seg_map through.
@pytest.mark.parametrize('path', SEGMENTATION)
def test_mmseg_inferencer(path, tmp_path):
    pytest.importorskip('mmseg')
    from mmseg.apis import MMSegInferencer

    cfg = load_dense(path, tiny_segmentor)
    classes = tuple(f'c{i}' for i in range(cfg.model.decode_head.num_classes))
    palette = [[i, 255 - i, 0] for i in range(len(classes))]
    checkpoint = tmp_path / 'model.pth'
    dense_checkpoint(cfg, 'mmseg', checkpoint, {'classes': classes, 'palette': palette})
    inferencer = MMSegInferencer(cfg, weights=str(checkpoint), device='cpu')
    inferencer.show_progress = False
    assert type(inferencer.model.backbone).__name__ == cfg.model.backbone.type.split('.')[-1]

    image = tmp_path / 'image.jpg'  # ADE20K's images are JPEG
    write_image(image, size=(96, 72))
    expected = dense_reference(cfg, 'mmseg', inferencer.model, image,
                               drop=('LoadAnnotations', 'CheckSegLabels'))
    for inputs in (str(image), cv2.imread(str(image))):  # a path, an array (BGR)
        result = inferencer(inputs, return_datasamples=True)
        assert result.pred_sem_seg.data.shape == (1, 72, 96)
        torch.testing.assert_close(result.seg_logits.data, expected.seg_logits.data,
                                   rtol=0, atol=1e-4)
        assert torch.equal(result.pred_sem_seg.data, expected.pred_sem_seg.data)


# ------------------------------------------------------------------ coverage
def family(cfg: Config) -> str:
    """What decides how an image reaches the model: the test pipeline, the
    data preprocessor (less the class count), the trunk and the model."""
    preprocessor = cfg.model.get('data_preprocessor') or cfg.data_preprocessor
    preprocessor = {k: v for k, v in preprocessor.items() if k != 'num_classes'}
    return json.dumps([cfg.test_dataloader.dataset.pipeline, preprocessor,
                       cfg.model.backbone.type, cfg.model.type], sort_keys=True, default=str)


@pytest.mark.parametrize('patterns,tested', [
    (('dtl/**/*.py', 'demo/*.py'), list(CLASSIFICATION)),
    (('mmdet/*.py', ), DETECTION),
    (('mmseg/*.py', ), SEGMENTATION)])
def test_every_config_is_represented(patterns, tested):
    """Every shipped config shares its family with a config tested here."""
    scope = patterns[0].split('/')[0]
    if scope in ('mmdet', 'mmseg'):
        pytest.importorskip(scope)
    paths = sorted({str(p.relative_to(REPO)) for pattern in patterns
                    for p in (REPO / 'configs').glob(pattern)})
    assert set(tested) <= set(paths)
    families = {}
    for path in paths:
        families.setdefault(family(Config.fromfile(str(REPO / path))), []).append(path)
    untested = [group for group in families.values() if not set(group) & set(tested)]
    assert not untested, f'test one config of each of these groups: {untested}'
