"""The dense mini-benchmark's scenes: determinism, exact boxes / masks / label
maps, disjoint source pools, loading through mmdet's and mmseg's pipelines,
and a clear error for every kind of mismatched file."""
import json
import os
import os.path as osp
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmdtl.datasets.dense_scenes import (
    BACKGROUND_MAX,
    DENSE_SCENES_CLASSES,
    DENSE_SCENES_SEG_CLASSES,
    DenseScenesError,
    check_dense_scenes,
    mask_to_rle,
    rle_to_mask,
    source_pools,
    write_dense_scenes,
)
from mmdtl.testing import make_fashion_mnist_files

REPO = Path(__file__).resolve().parents[2]
SIZES = dict(num_train=8, num_val=4, num_test=6)


def all_files(root):
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = osp.join(folder, name)
            out[osp.relpath(path, root)] = Path(path).read_bytes()
    return out


def read_coco(root, split):
    with open(osp.join(root, 'annotations', f'instances_{split}.json')) as f:
        return json.load(f)


def read_png(path):
    with Image.open(path) as img:
        assert img.mode == 'L'
        return np.asarray(img)


@pytest.fixture(scope='module')
def fashion(tmp_path_factory):
    # 20 items per class: pools of 12 / 2 / 6 per class and split
    return make_fashion_mnist_files(tmp_path_factory.mktemp('fashion'), num_test=200)


@pytest.fixture(scope='module')
def scenes(fashion, tmp_path_factory):
    root = str(tmp_path_factory.mktemp('scenes') / 'dense-scenes')
    meta = write_dense_scenes(root, fashion_source=fashion, **SIZES)
    return root, meta


@pytest.fixture
def scenes_copy(scenes, tmp_path):
    root = str(tmp_path / 'dense-scenes')
    shutil.copytree(scenes[0], root)
    return root


def test_deterministic_bytes(scenes, fashion, tmp_path):
    root, meta = scenes
    again = str(tmp_path / 'elsewhere')
    assert write_dense_scenes(again, fashion_source=fashion, **SIZES) == meta
    first, second = all_files(root), all_files(again)
    assert sorted(first) == sorted(second)
    assert len(first) == 3 + 1 + 2 * sum(SIZES.values())
    assert all(first[name] == second[name] for name in first)
    # the seed matters, and one split's count leaves the others as they were
    other = write_dense_scenes(str(tmp_path / 'seed1'), fashion_source=fashion, seed=1, **SIZES)
    assert other['sha256']['annotations/instances_train.json'] != \
        meta['sha256']['annotations/instances_train.json']
    more = write_dense_scenes(str(tmp_path / 'more'), fashion_source=fashion,
                              **{**SIZES, 'num_test': 7})
    assert more['sha256']['annotations/instances_train.json'] == \
        meta['sha256']['annotations/instances_train.json']
    # meta.json's sha256s are those of the files
    import hashlib
    for name in ('annotations/instances_train.json', 'annotations/instances_test.json'):
        assert hashlib.sha256(first[name]).hexdigest() == meta['sha256'][name]


def test_boxes_masks_and_label_maps_are_exact(scenes):
    root, meta = scenes
    assert meta['classes'] == list(DENSE_SCENES_CLASSES)
    assert len(DENSE_SCENES_CLASSES) == 20 and DENSE_SCENES_SEG_CLASSES[0] == 'background'
    for split in ('train', 'val', 'test'):
        coco = read_coco(root, split)
        assert [(c['id'], c['name']) for c in coco['categories']] == \
            [(i + 1, n) for i, n in enumerate(DENSE_SCENES_CLASSES)]
        assert len(coco['images']) == SIZES[f'num_{split}']
        for img in coco['images']:
            image = read_png(osp.join(root, 'img_dir', split, img['file_name']))
            label_map = read_png(osp.join(root, 'ann_dir', split, img['file_name']))
            assert image.shape == label_map.shape == (img['height'], img['width']) == (112, 112)
            anns = [a for a in coco['annotations'] if a['image_id'] == img['id']]
            assert 1 <= len(anns) <= 6
            union = np.zeros_like(label_map, dtype=np.int64)
            for ann in anns:
                mask = rle_to_mask(ann['segmentation'])
                ys, xs = np.nonzero(mask)
                assert ann['bbox'] == [xs.min(), ys.min(), xs.max() - xs.min() + 1,
                                       ys.max() - ys.min() + 1]
                assert ann['area'] == mask.sum() >= meta['min_area']
                assert ann['iscrowd'] == 0
                assert not union[mask].any(), 'visible masks overlap'
                union[mask] = ann['category_id']
            np.testing.assert_array_equal(label_map, union)
            # every object pixel is brighter than every background pixel
            np.testing.assert_array_equal(image > BACKGROUND_MAX, label_map > 0)


def test_rle_round_trip_matches_pycocotools():
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    for shape in ((5, 7), (112, 112)):
        mask = rng.random(shape) > 0.6
        mask[0, 0] = True  # counts then start with 0 zeros
        rle = mask_to_rle(mask)
        np.testing.assert_array_equal(rle_to_mask(rle), mask)
        decoded = mask_utils.decode(mask_utils.frPyObjects(rle, *shape)).astype(bool)
        np.testing.assert_array_equal(decoded, mask)


def test_source_pools_are_disjoint(scenes):
    root, _ = scenes
    used = {}
    for split in ('train', 'val', 'test'):
        for ann in read_coco(root, split)['annotations']:
            used.setdefault(split, set()).add((ann['source'], ann['source_index']))
    assert not used['test'] & (used['train'] | used['val'])
    assert not used['train'] & used['val']
    # the pools themselves: disjoint, complete, stratified
    labels = dict(a=np.arange(1000) % 10, b=np.arange(37) % 3)
    pools = source_pools(labels, seed=0)
    for source, source_labels in labels.items():
        parts = [set(pools[s][source].tolist()) for s in ('train', 'val', 'test')]
        assert sum(map(len, parts)) == len(set.union(*parts)) == len(source_labels)
    assert [len(pools[s]['a']) for s in ('train', 'val', 'test')] == [600, 100, 300]


def test_mmdet_pipeline_and_coco_metric(scenes):
    import torch
    from mmdet.evaluation import CocoMetric
    from mmdet.registry import DATASETS
    from mmengine.registry import init_default_scope

    import mmdtl  # noqa: F401  (registers the dataset)
    root, _ = scenes
    init_default_scope('mmdet')
    dataset = DATASETS.build(dict(
        type='DenseScenesCocoDataset', data_root=root,
        ann_file='annotations/instances_val.json', data_prefix=dict(img='img_dir/val/'),
        pipeline=[dict(type='LoadImageFromFile', color_type='grayscale'),
                  dict(type='LoadAnnotations', with_bbox=True, with_mask=True)]))
    assert dataset.metainfo['classes'] == DENSE_SCENES_CLASSES
    coco = read_coco(root, 'val')
    assert len(dataset) == len(coco['images'])
    metric = CocoMetric(ann_file=osp.join(root, 'annotations/instances_val.json'),
                        metric=['bbox', 'segm'])
    metric.dataset_meta = dataset.metainfo
    for i in range(len(dataset)):
        results = dataset[i]
        assert results['img'].shape == (112, 112)
        anns = [a for a in coco['annotations'] if a['image_id'] == results['img_id']]
        boxes = [[x, y, x + w, y + h] for x, y, w, h in (a['bbox'] for a in anns)]
        np.testing.assert_array_equal(results['gt_bboxes'].numpy(), boxes)
        np.testing.assert_array_equal(results['gt_bboxes_labels'],
                                      [a['category_id'] - 1 for a in anns])
        masks = results['gt_masks'].to_ndarray().astype(bool)
        np.testing.assert_array_equal(masks, [rle_to_mask(a['segmentation']) for a in anns])
        # the ground truth as predictions scores 1.0 with mmdet's CocoMetric
        metric.process({}, [dict(img_id=results['img_id'], ori_shape=(112, 112),
                                 pred_instances=dict(
                                     bboxes=torch.tensor(boxes, dtype=torch.float32),
                                     scores=torch.ones(len(anns)),
                                     labels=torch.tensor(results['gt_bboxes_labels']),
                                     masks=torch.from_numpy(masks)))])
    scores = metric.evaluate(len(dataset))
    assert scores['coco/bbox_mAP'] == scores['coco/segm_mAP'] == 1.0


def test_mmseg_pipeline(scenes):
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS

    import mmdtl  # noqa: F401  (registers the dataset)
    root, _ = scenes
    init_default_scope('mmseg')
    dataset = DATASETS.build(dict(
        type='DenseScenesSegDataset', data_root=root,
        data_prefix=dict(img_path='img_dir/test', seg_map_path='ann_dir/test'),
        pipeline=[dict(type='LoadImageFromFile', color_type='grayscale'),
                  dict(type='LoadAnnotations')]))
    assert dataset.metainfo['classes'] == DENSE_SCENES_SEG_CLASSES
    assert len(dataset.metainfo['palette']) == 21
    assert len(dataset) == SIZES['num_test']
    results = dataset[2]
    assert results['img'].shape == (112, 112)
    expected = read_png(osp.join(root, 'ann_dir/test', osp.basename(results['img_path'])))
    np.testing.assert_array_equal(results['gt_seg_map'], expected)
    with pytest.raises(ValueError, match='reduce_zero_label=False'):
        DATASETS.build(dict(type='DenseScenesSegDataset', data_root=root,
                            data_prefix=dict(img_path='img_dir/test',
                                             seg_map_path='ann_dir/test'),
                            reduce_zero_label=True))


def build_coco(root, split='train'):
    from mmdet.registry import DATASETS

    import mmdtl  # noqa: F401
    return DATASETS.build(dict(
        type='DenseScenesCocoDataset', data_root=root,
        ann_file=f'annotations/instances_{split}.json', data_prefix=dict(img=f'img_dir/{split}/')))


def build_seg(root, split='train'):
    from mmseg.registry import DATASETS

    import mmdtl  # noqa: F401
    return DATASETS.build(dict(
        type='DenseScenesSegDataset', data_root=root,
        data_prefix=dict(img_path=f'img_dir/{split}', seg_map_path=f'ann_dir/{split}')))


def edit_coco(root, edit, split='train'):
    path = osp.join(root, 'annotations', f'instances_{split}.json')
    with open(path) as f:
        coco = json.load(f)
    edit(coco)
    with open(path, 'w') as f:
        json.dump(coco, f)
    return path


def test_coco_annotation_that_does_not_match_its_image(scenes_copy):
    root = scenes_copy

    def shrink(coco):  # the file says 100 px wide, the image is 112
        coco['images'][1]['width'] = 100

    ann_file = edit_coco(root, shrink)
    with pytest.raises(DenseScenesError) as e:
        build_coco(root)
    msg = str(e.value)
    assert f'{ann_file}: image id 2: says 100x112 (width x height) but ' \
           f'{osp.join(root, "img_dir/train/train_00001.png")} is 112x112' in msg
    assert f'make_dense_scenes.py --out-dir {root} --seed 0' in msg  # the fix


def test_coco_bbox_outside_or_not_tight(scenes_copy):
    root = scenes_copy

    def move(coco):
        coco['annotations'][0]['bbox'][0] = 110  # reaches past x = 112
        coco['annotations'][2]['bbox'][3] += 1  # no longer the mask's tight box

    ann_file = edit_coco(root, move)
    with pytest.raises(DenseScenesError) as e:
        build_coco(root)
    msg = str(e.value)
    assert f'{ann_file}: annotation id 1 (image id 1, 112x112): bbox [x, y, w, h] = [110,' in msg
    assert 'reaches outside the 112x112 image' in msg
    assert f'{ann_file}: annotation id 3 ' in msg and 'is not the tight box' in msg
    # check_annotations=False loads it anyway (mmdet's own behaviour)
    from mmdet.registry import DATASETS
    assert len(DATASETS.build(dict(
        type='DenseScenesCocoDataset', data_root=root, check_annotations=False,
        ann_file='annotations/instances_train.json', data_prefix=dict(img='img_dir/train/'))))


def test_seg_label_map_size_and_values(scenes_copy):
    root = scenes_copy
    small = osp.join(root, 'ann_dir/train/train_00003.png')
    Image.fromarray(np.zeros((100, 112), np.uint8)).save(small)
    bad = osp.join(root, 'ann_dir/train/train_00005.png')
    values = read_png(bad).copy()
    values[0, :3] = [21, 30, 255]  # 255 is mmseg's ignore index: allowed
    Image.fromarray(values).save(bad)
    with pytest.raises(DenseScenesError) as e:
        build_seg(root)
    msg = str(e.value)
    assert f'{small}: label map is 112x100 but its image ' in msg
    assert f'{bad}: values [21, 30] are outside [0, 21) and not the ignore index 255' in msg
    assert 'Regenerate the scenes with' in msg


def test_check_data_lists_every_problem(scenes, scenes_copy, capsys, load_cli):
    check_data = load_cli('tools/check_data.py')
    assert check_data.main(['dense-scenes', '--data-root', scenes[0]]) == 0
    assert 'no problems (18 images listed)' in capsys.readouterr().out
    root = scenes_copy
    # a label-map pixel of another (valid) class: only the cross-check sees it
    path = osp.join(root, 'ann_dir/val/val_00000.png')
    values = read_png(path).copy()
    values[values > 0] = np.where(values[values > 0] == 1, 2, 1)
    Image.fromarray(values).save(path)
    edit_coco(root, lambda coco: coco['images'][0].update(height=50), split='test')
    assert check_data.main(['dense-scenes', '--data-root', root]) == 1
    out = capsys.readouterr().out
    assert f'{path}: label map is not the union of the instance masks of image id 1' in out
    assert 'instances_test.json: image id 1: says 112x50' in out
    assert 'instances_test.json: sha256 differs from the one in' in out
    assert check_dense_scenes(scenes[0]) == []


def test_generator_refuses_bad_options_and_foreign_folders(fashion, tmp_path, load_cli):
    tool = load_cli('tools/misc/make_dense_scenes.py')
    with pytest.raises(SystemExit, match=r'largest object \(60 px, --object-size\)'):
        tool.main(['--out-dir', str(tmp_path / 'x'), '--size', '56', '--object-size', '20',
                   '60', '--fashion-mnist', fashion])
    with pytest.raises(SystemExit, match='--num-val'):
        tool.main(['--out-dir', str(tmp_path / 'x'), '--num-val', '0'])
    foreign = tmp_path / 'mine'
    foreign.mkdir()
    (foreign / 'notes.txt').write_text('keep me')
    with pytest.raises(SystemExit, match='holds no meta.json'):
        tool.main(['--out-dir', str(foreign), '--fashion-mnist', fashion])
    assert (foreign / 'notes.txt').read_text() == 'keep me'
    with pytest.raises(SystemExit, match='t10k-images-idx3-ubyte'):
        tool.main(['--out-dir', str(tmp_path / 'y'), '--fashion-mnist', str(tmp_path / 'none')])
