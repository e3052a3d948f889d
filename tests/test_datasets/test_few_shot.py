"""FewShotFGVC on generated NOAH-layout trees, and shot/seed from the command line."""
import os
import os.path as osp
import re
from pathlib import Path

import pytest
from mmengine.config import Config

import mmdtl  # noqa: F401  (registers datasets and the runner)
from mmdtl.datasets.few_shot import (
    FewShotFGVC,
    FewShotRunner,
    apply_few_shot_options,
)
from mmdtl.testing import make_few_shot_tree

REPO = Path(__file__).resolve().parents[2]
FAST = dict(serialize_data=False)


@pytest.fixture(scope='module')
def toy_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('fgfs')
    make_few_shot_tree(str(root), name='toy', num_classes=3, shots=(1, 2, 4), seeds=(0, 1))
    return str(root)


def test_parse_splits(toy_root):
    for split, shot, seed, length in [('train', 1, 0, 3), ('train', 4, 1, 12), ('val', 1, 0, 3),
                                      ('test', 16, 9, 3)]:
        ds = FewShotFGVC(toy_root, 'toy', split=split, shot=shot, seed=seed, num_classes=3,
                         **FAST)
        assert len(ds) == length
        for i in range(len(ds)):
            info = ds.get_data_info(i)
            assert osp.isfile(info['img_path'])
            assert info['img_path'].startswith(osp.join(toy_root, 'toy'))
        assert sorted(set(ds.get_gt_labels().tolist())) == [0, 1, 2]
    assert ds.CLASSES == ('0', '1', '2')
    train = FewShotFGVC(toy_root, 'toy', shot=2, seed=1, num_classes=3, **FAST)
    assert train.ann_file.endswith('few-shot_split/toy/annotations/'
                                   'train_meta.list.num_shot_2.seed_1')
    assert 'Shot / seed: \t2 / 1' in repr(train)


def test_names_and_aliases(tmp_path):
    make_few_shot_tree(str(tmp_path), name='standford-cars', shots=(1, ), image_size=4)
    for alias in ('standford-cars', 'stanford-cars', 'standford-cars-FS'):
        ds = FewShotFGVC(str(tmp_path), alias, shot=1, **FAST)
        assert ds.name == 'standford-cars' and ds.num_classes == 196 and len(ds) == 196
    with pytest.raises(ValueError, match='unknown dataset .*fgvc-aircraft.*num_classes'):
        FewShotFGVC(str(tmp_path), 'cars')
    with pytest.raises(ValueError, match='has 196 classes, but num_classes=10'):
        FewShotFGVC(str(tmp_path), 'stanford-cars', num_classes=10)
    with pytest.raises(ValueError, match="unknown split 'trainval'.*train, val, test"):
        FewShotFGVC(str(tmp_path), 'stanford-cars', split='trainval')
    with pytest.raises(ValueError, match='shot must be a positive int'):
        FewShotFGVC(str(tmp_path), 'stanford-cars', shot='4')
    with pytest.raises(ValueError, match='seed must be an int >= 0'):
        FewShotFGVC(str(tmp_path), 'stanford-cars', shot=1, seed=-1)


def test_missing_files(toy_root, tmp_path):
    with pytest.raises(FileNotFoundError,
                       match=r'num_shot_8\.seed_0 does not exist\. Train lists present: '
                       r'shot 1: seeds 0, 1; shot 2: seeds 0, 1; shot 4: seeds 0, 1\.'):
        FewShotFGVC(toy_root, 'toy', shot=8, num_classes=3)
    with pytest.raises(FileNotFoundError, match=r"split folder .*few-shot_split/other/"
                       r"annotations does not exist.*data/few-shot/other"):
        FewShotFGVC(toy_root, 'other', num_classes=3)


@pytest.mark.parametrize('line, error, message', [
    ('000_val.png', ValueError, r'malformed line in .*val_meta\.list, line 2: .*expected'),
    ('000_val.png x', ValueError, r"line 2: .*label 'x' is not an int"),
    ('000_val.png 3', ValueError, r'label 3 in .*val_meta\.list, line 2 is outside \[0, 3\)'),
    ('nope.png 1', FileNotFoundError,
     r'image .*toy/nope\.png does not exist \(listed in .*val_meta\.list, line 2\)'),
])
def test_bad_lines_name_file_and_line(tmp_path, line, error, message):
    ann_dir = make_few_shot_tree(str(tmp_path), name='toy', num_classes=3, shots=(1, ))
    with open(osp.join(ann_dir, 'val_meta.list'), 'w') as f:
        f.write(f'000_val.png 0\n{line}\n')
    with pytest.raises(error, match=message):
        FewShotFGVC(str(tmp_path), 'toy', split='val', num_classes=3)


def test_split_file_not_utf8_names_file_and_line(tmp_path):
    ann_dir = make_few_shot_tree(str(tmp_path), name='toy', num_classes=3, shots=(1, ))
    ann = osp.join(ann_dir, 'train_meta.list.num_shot_1.seed_0')
    with open(ann, 'ab') as f:
        f.write(b'\xff\xfe0\x000\x00 1\n')  # a UTF-16 line appended by hand
    with pytest.raises(ValueError, match=f'{re.escape(ann)}, line 4 is not UTF-8 '
                       r'\(byte 0xff at column 1'):
        FewShotFGVC(str(tmp_path), 'toy', shot=1, num_classes=3, **FAST)


def test_paths_with_spaces(tmp_path):
    ann_dir = make_few_shot_tree(str(tmp_path), name='toy', num_classes=3, shots=(1, ))
    os.replace(osp.join(tmp_path, 'toy', '001_val.png'), osp.join(tmp_path, 'toy', 'a b.png'))
    with open(osp.join(ann_dir, 'val_meta.list'), 'w') as f:
        f.write('\na b.png   1\n\n')
    ds = FewShotFGVC(str(tmp_path), 'toy', split='val', num_classes=3, **FAST)
    assert len(ds) == 1 and ds.get_data_info(0)['img_path'].endswith('toy/a b.png')


def test_released_pipelines_run(toy_root):
    """The base config's train (RandAugment) and test transforms on a real sample."""
    from mmpretrain.datasets import build_dataset
    from mmpretrain.registry import TRANSFORMS  # noqa: F401
    from mmpretrain.utils import register_all_modules
    register_all_modules()
    cfg = Config.fromfile(REPO / 'configs/_base_/datasets/few_shot.py')
    assert cfg.train_pipeline[3]['type'] == 'RandAugment'
    for loader in ('train_dataloader', 'test_dataloader'):
        ds_cfg = dict(cfg[loader].dataset, data_root=toy_root, name='toy', num_classes=3, shot=1,
                      **FAST)
        out = build_dataset(ds_cfg)[0]
        assert tuple(out['inputs'].shape) == (3, 224, 224)


def few_shot_cfg(options=None, work_dir='/tmp/w'):
    cfg = Config.fromfile(REPO / 'configs/dtl/few_shot/vit-b_dtl+_oxford-flowers102.py')
    cfg.merge_from_dict(options or {})
    cfg.work_dir = work_dir
    return cfg


def test_shot_seed_options_propagate():
    cfg = few_shot_cfg({'shot': 4, 'seed': 1})
    # the dataset still holds the values the file was read with ...
    assert cfg.train_dataloader.dataset.shot == 16 and cfg.optim_wrapper.optimizer.lr is None
    apply_few_shot_options(cfg)
    # ... until the runner applies the command line
    assert cfg.train_dataloader.dataset.shot == 4 and cfg.train_dataloader.dataset.seed == 1
    assert cfg.optim_wrapper.optimizer.lr == 8e-3  # released flowers DTL+ 4-shot lr
    assert cfg.work_dir == '/tmp/w/shot4_seed1'
    assert 'shot' not in cfg.val_dataloader.dataset

    cfg = few_shot_cfg({'shot': 2, 'lr_per_shot.2': 0.5})
    apply_few_shot_options(cfg)
    assert cfg.optim_wrapper.optimizer.lr == 0.5
    cfg = few_shot_cfg({'shot': 2, 'optim_wrapper.optimizer.lr': 0.25})
    apply_few_shot_options(cfg)
    assert cfg.optim_wrapper.optimizer.lr == 0.25

    with pytest.raises(ValueError, match=r'lr_per_shot has no learning rate for shot=3 .*'
                       r'optim_wrapper\.optimizer\.lr'):
        apply_few_shot_options(few_shot_cfg({'shot': 3}))
    with pytest.raises(ValueError, match=r"seed must be an int >= 0.*got 'x'.*--cfg-options"):
        apply_few_shot_options(few_shot_cfg({'seed': 'x'}))


def test_runner_builds_the_selected_split(toy_root, tmp_path):
    """As tools/train.py does it: RUNNERS.build with --cfg-options shot=4 seed=1."""
    from mmengine.registry import RUNNERS

    cfg = few_shot_cfg({
        'shot': 4, 'seed': 1,
        'model.backbone.arch': 'deit-tiny', 'model.backbone.img_size': 32,
        'model.backbone.init_cfg': None, 'model.head.in_channels': 192,
        'model.head.num_classes': 3, 'optim_wrapper.type': 'OptimWrapper',
        'train_dataloader.dataset.data_root': toy_root,
        'train_dataloader.dataset.name': 'toy',
        'train_dataloader.dataset.num_classes': 3,
        'train_dataloader.num_workers': 0, 'train_dataloader.persistent_workers': False,
    }, work_dir=str(tmp_path))
    assert cfg.runner_type == 'FewShotRunner'
    runner = RUNNERS.build(cfg)
    assert isinstance(runner, FewShotRunner)
    assert runner.work_dir == osp.join(str(tmp_path), 'shot4_seed1')
    dataset = runner.build_dataloader(runner._train_dataloader).dataset
    assert (dataset.shot, dataset.seed, len(dataset)) == (4, 1, 12)
    assert re.search(r'num_shot_4\.seed_1$', dataset.ann_file)
    assert runner.cfg.optim_wrapper.optimizer.lr == 8e-3
