"""DomainGeneralization on a generated DG tree, and the masked 200-class metric."""
import os.path as osp
import re
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

import mmdtl  # noqa: F401
import mmdtl.evaluation  # noqa: F401  (registers MaskedAccuracy)
from mmdtl.datasets.domain_generalization import DomainGeneralization
from mmdtl.evaluation import MaskedAccuracy
from mmdtl.testing import make_dg_tree

REPO = Path(__file__).resolve().parents[2]
FAST = dict(serialize_data=False)


@pytest.fixture(scope='module')
def dg_root(tmp_path_factory):
    return make_dg_tree(str(tmp_path_factory.mktemp('dg')))


def test_train_split(dg_root):
    ds = DomainGeneralization(dg_root, 'imagenet', split='train', seed=2, **FAST)
    assert len(ds) == 8 and ds.shot == 16 and ds.seed == 2
    info = ds.get_data_info(0)
    assert info['img_path'].startswith(osp.join(dg_root, 'imagenet', 'images', 'train'))
    assert osp.isfile(info['img_path']) and info['domain'] == 'imagenet'
    with pytest.raises(ValueError, match=r"train split is ImageNet few-shot only"):
        DomainGeneralization(dg_root, 'imagenet-sketch', split='train')
    with pytest.raises(FileNotFoundError, match=r'num_shot_4\.seed_0 does not exist.*'
                       r'Train lists present: shot 16: seeds 0, 1, 2\.'):
        DomainGeneralization(dg_root, 'imagenet', split='train', shot=4)


def test_all_test_sets_in_one_dataset(dg_root):
    names = ['imagenet', 'imagenet-v2', 'imagenet-sketch', 'imagenet-a', 'imagenet-r']
    ds = DomainGeneralization(dg_root, names, split='test', **FAST)
    assert ds.names == ['imagenet', 'imagenetv2', 'imagenet-sketch', 'imagenet-adversarial',
                        'imagenet-rendition']
    assert len(ds) == 2 * (4 + 4 + 4 + 2 + 3)
    infos = [ds.get_data_info(i) for i in range(len(ds))]
    assert all(osp.isfile(i['img_path']) for i in infos)
    assert [i['domain'] for i in infos][-6:] == ['imagenet-rendition'] * 6
    val = [i for i in infos if i['domain'] == 'imagenet']
    assert val[0]['img_path'].startswith(osp.join(dg_root, 'imagenet', 'images', 'val'))
    a = [i for i in infos if i['domain'] == 'imagenet-adversarial']
    assert ' _ soap dispenser' in a[0]['img_path'] and a[0]['gt_label'] == 1
    meta = ds.metainfo
    assert len(meta['classes']) == 1000
    assert meta['domains'] == tuple(ds.names)
    assert meta['class_subsets'] == {
        'imagenet': None, 'imagenetv2': None, 'imagenet-sketch': None,
        'imagenet-adversarial': (1, 954), 'imagenet-rendition': (0, 954, 999)}

    given = DomainGeneralization(dg_root, 'imagenet-a', class_subsets={'imagenet-a': [1, 954, 7]},
                                 **FAST)
    assert given.metainfo['class_subsets'] == {'imagenet-adversarial': (1, 7, 954)}
    with pytest.raises(ValueError, match=r'val_meta\.list has labels outside '
                       r"class_subsets\['imagenet-adversarial'\]: \[954\]"):
        DomainGeneralization(dg_root, 'imagenet-a', class_subsets={'imagenet-a': [1]})


def test_errors(dg_root, tmp_path):
    with pytest.raises(ValueError, match=r"unknown dataset\(s\) 'imagenet-c'; known are "
                       r'imagenet, imagenetv2'):
        DomainGeneralization(dg_root, ['imagenet', 'imagenet-c'])
    with pytest.raises(ValueError, match="unknown split 'val'"):
        DomainGeneralization(dg_root, split='val')
    with pytest.raises(FileNotFoundError, match=r'imagenet-sketch/annotations/val_meta\.list '
                       r"does not exist \(data_root=.*name='imagenet-sketch'\)"):
        DomainGeneralization(str(tmp_path), 'imagenet-sketch')
    bad = make_dg_tree(str(tmp_path / 'bad'), classes={'imagenet': (0, ),
                                                       'imagenet-rendition': (3, )}, seeds=(0, ))
    ann = osp.join(bad, 'imagenet-rendition', 'annotations', 'val_meta.list')
    with open(ann, 'a') as f:
        f.write('imagenet-r/n00000003/x_0.png 1000\n')
    with pytest.raises(ValueError, match=r'label 1000 in .*imagenet-rendition/annotations/'
                       r'val_meta\.list, line 3 is outside \[0, 1000\)'):
        DomainGeneralization(bad, 'imagenet-r')


def test_split_file_not_utf8_names_file_and_line(tmp_path):
    root = make_dg_tree(str(tmp_path), classes={'imagenet': (0, ), 'imagenet-sketch': (5, )},
                        seeds=(0, ))
    ann = osp.join(root, 'imagenet-sketch', 'annotations', 'val_meta.list')
    with open(ann, 'rb') as f:
        lines = f.read().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'x_1', 'x_é'.encode('cp1252'))
    with open(ann, 'wb') as f:
        f.writelines(lines)
    with pytest.raises(ValueError, match=f'{re.escape(ann)}, line 2 is not UTF-8'):
        DomainGeneralization(root, 'imagenet-sketch', **FAST)


def test_test_pipeline_keeps_domain(dg_root):
    from mmpretrain.datasets import build_dataset
    from mmpretrain.utils import register_all_modules
    register_all_modules()
    cfg = Config.fromfile(REPO / 'configs/_base_/datasets/domain_generalization.py')
    ds = build_dataset(dict(cfg.test_dataloader.dataset, data_root=dg_root, **FAST))
    sample = ds[len(ds) - 1]
    assert sample['data_samples'].domain == 'imagenet-rendition'
    assert tuple(sample['inputs'].shape) == (3, 224, 224)
    assert cfg.test_evaluator == dict(type='MaskedAccuracy', group_key='domain')


def _sample(scores, gt, **meta):
    return dict(pred_score=torch.tensor(scores, dtype=torch.float), gt_label=torch.tensor([gt]),
                **meta)


def test_masked_accuracy_by_hand():
    # 6 classes, the set covers classes 1 and 3.
    metric = MaskedAccuracy(class_subset=[3, 1])
    metric.dataset_meta = dict(classes=tuple('012345'))
    samples = [
        # argmax over all is class 0 (outside the set): wrong; within {1, 3}: 3, right
        _sample([9, 1, 0, 2, 0, 0], 3),
        # right both ways
        _sample([0, 5, 0, 1, 0, 0], 1),
        # wrong both ways: 3 beats 1 inside the set
        _sample([0, 1, 0, 2, 0, 0], 1),
        # argmax 5 outside the set, masked picks 1: right
        _sample([0, 4, 0, 3, 0, 8], 1),
    ]
    metric.process(None, samples)
    assert metric.evaluate(len(samples)) == {'accuracy/top1': 25.0,
                                             'accuracy/top1_masked': 75.0}


def test_masked_accuracy_per_domain_from_dataset_meta():
    metric = MaskedAccuracy(group_key='domain')
    metric.dataset_meta = dict(classes=tuple('0123'), domains=('imagenet', 'imagenet-r'),
                               class_subsets={'imagenet': None, 'imagenet-r': (2, 3)})
    samples = [
        _sample([5, 0, 1, 0], 0, domain='imagenet'),
        _sample([5, 0, 1, 0], 2, domain='imagenet'),
        _sample([5, 0, 1, 0], 2, domain='imagenet-r'),  # 1000-way wrong, masked right
        _sample([0, 0, 1, 4], 3, domain='imagenet-r'),
    ]
    metric.process(None, samples)
    assert metric.evaluate(4) == {
        'accuracy/imagenet/top1': 50.0,
        'accuracy/imagenet-r/top1': 50.0,
        'accuracy/imagenet-r/top1_masked': 100.0,
    }
    metric = MaskedAccuracy(group_key='domain')
    with pytest.raises(KeyError, match=r"no 'domain' field.*PackInputs\(meta_keys"):
        metric.process(None, [_sample([1, 0], 0)])
    with pytest.raises(ValueError, match='class_subset is for one group'):
        MaskedAccuracy(group_key='domain', class_subset=[1])


def test_masked_accuracy_registered():
    from mmpretrain.registry import METRICS
    metric = METRICS.build(dict(type='MaskedAccuracy', group_key='domain'))
    assert isinstance(metric, MaskedAccuracy)
