import os
import os.path as osp
import re

import pytest

import mmdtl  # noqa: F401  (registers VTAB1k)
from mmdtl.datasets import VTAB1K_GROUPS, VTAB1K_TASKS, VTAB1k, write_digits_vtab
from mmdtl.testing import make_vtab_tree


@pytest.fixture
def cifar_root(tmp_path):
    make_vtab_tree(str(tmp_path), task='cifar', image_size=8)
    return str(tmp_path)


# mmengine's serialization runs gc.collect() (~0.3 s per dataset); not needed here.
FAST = dict(serialize_data=False)


def _write(path, text):
    with open(path, 'w') as f:
        f.write(text)


def test_parse_generated_tree(cifar_root):
    task_dir = osp.join(cifar_root, 'cifar')
    expected = dict(train800val200=12, train800=8, val200=4, test=6)
    for split, length in expected.items():
        ds = VTAB1k(cifar_root, 'cifar', split=split, **FAST)
        assert len(ds) == length
        infos = [ds.get_data_info(i) for i in range(len(ds))]
        for info in infos:
            assert osp.isabs(info['img_path']) and osp.isfile(info['img_path'])
            assert info['img_path'].startswith(osp.abspath(task_dir))
            assert isinstance(info['gt_label'], int)
        labels = list(range(8)) + list(range(4)) if split == 'train800val200' else \
            list(range(length))
        assert ds.get_gt_labels().tolist() == labels
    assert ds.CLASSES == tuple(str(i) for i in range(100))
    assert ds.task == 'cifar' and ds.split == 'test' and ds.num_classes == 100
    assert 'Split: \ttest' in repr(ds)


def test_blank_lines_and_spaces_in_paths(tmp_path):
    task_dir = make_vtab_tree(str(tmp_path), task='cifar', image_size=8)
    os.makedirs(osp.join(task_dir, 'my images'))
    os.replace(osp.join(task_dir, 'images/test/000000.png'),
               osp.join(task_dir, 'my images/a b.png'))
    _write(osp.join(task_dir, 'test.txt'), '\nmy images/a b.png   7\n\n  \n')
    ds = VTAB1k(str(tmp_path), 'cifar', split='test')
    assert len(ds) == 1
    assert ds.get_data_info(0)['img_path'] == osp.join(osp.abspath(task_dir), 'my images/a b.png')
    assert ds.get_data_info(0)['gt_label'] == 7


def test_tasks_and_groups():
    assert len(VTAB1K_TASKS) == 19
    assert VTAB1K_TASKS['cifar'] == 100 and VTAB1K_TASKS['sun397'] == 397
    assert VTAB1K_TASKS['patch_camelyon'] == 2 and VTAB1K_TASKS['smallnorb_ele'] == 9
    expected_total = (100 + 102 + 47 + 102 + 37 + 10 + 397 + 2 + 10 + 45 + 5 + 8 + 6 + 6 + 4 + 16
                      + 16 + 18 + 9)
    assert sum(VTAB1K_TASKS.values()) == expected_total == 940
    assert [len(v) for v in VTAB1K_GROUPS.values()] == [7, 4, 8]
    # The groups partition the tasks, in table order.
    flat = [t for tasks in VTAB1K_GROUPS.values() for t in tasks]
    assert flat == list(VTAB1K_TASKS)


def test_aliases(tmp_path):
    for alias, task in [('cifar_100', 'cifar'), ('pets', 'oxford_iiit_pet'),
                        ('flowers102', 'oxford_flowers102')]:
        make_vtab_tree(str(tmp_path), task=task, sizes=dict(train800=2, val200=1, test=1),
                       image_size=4)
        ds = VTAB1k(str(tmp_path), alias, split='train800val200', **FAST)
        assert ds.task == task and len(ds) == 3
        assert ds.num_classes == VTAB1K_TASKS[task]


def test_custom_task(tmp_path):
    make_vtab_tree(str(tmp_path), task='mytask', num_classes=3, image_size=4)
    with pytest.raises(ValueError, match='unknown task .mytask.*cifar.*smallnorb_ele.*num_classes'):
        VTAB1k(str(tmp_path), 'mytask')
    ds = VTAB1k(str(tmp_path), 'mytask', num_classes=3)
    assert len(ds) == 12 and ds.CLASSES == ('0', '1', '2')
    # A known task keeps its official number of classes.
    with pytest.raises(ValueError, match='100 classes'):
        VTAB1k(str(tmp_path), 'cifar', num_classes=10)


def test_bad_split(cifar_root):
    with pytest.raises(ValueError, match='train800val200, train800, val200, test'):
        VTAB1k(cifar_root, 'cifar', split='train')


def test_missing_task_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(osp.join(str(tmp_path), 'dtd'))):
        VTAB1k(str(tmp_path), 'dtd')


def test_missing_split_file(cifar_root):
    os.remove(osp.join(cifar_root, 'cifar', 'val200.txt'))
    with pytest.raises(FileNotFoundError, match=r'val200\.txt does not exist'):
        VTAB1k(cifar_root, 'cifar', split='val200')


@pytest.mark.parametrize('content, lineno, what', [
    ('images/test/000000.png\n', 1, 'malformed'),
    ('images/test/000000.png 1\n\nimages/test/000001.png x\n', 3, 'malformed'),
    ('images/test/000000.png 1.0\n', 1, 'malformed'),
    ('images/test/000000.png 1\nimages/test/000001.png 100\n', 2, r'outside \[0, 100\)'),
    ('images/test/000000.png -1\n', 1, r'outside \[0, 100\)'),
    ('images/test/000000.png 1\nimages/test/nope.png 2\n', 2, r'nope\.png does not exist'),
])
def test_bad_lines(cifar_root, content, lineno, what):
    ann = osp.join(cifar_root, 'cifar', 'test.txt')
    _write(ann, content)
    exc = FileNotFoundError if 'exist' in what else ValueError
    with pytest.raises(exc, match=f'{what}.*{re.escape(ann)}, line {lineno}|'
                                  f'{re.escape(ann)}, line {lineno}.*{what}'):
        VTAB1k(cifar_root, 'cifar', split='test')


def test_split_file_not_utf8_names_file_and_line(cifar_root):
    ann = osp.join(cifar_root, 'cifar', 'test.txt')
    with open(ann, 'wb') as f:  # a Latin-1 file name on line 2
        f.write(b'images/test/000000.png 1\nimages/test/caf\xe9.png 2\n')
    with pytest.raises(ValueError, match=f'{re.escape(ann)}, line 2 is not UTF-8 '
                       r'\(byte 0xe9 at column 16: .*save the split file as UTF-8'):
        VTAB1k(cifar_root, 'cifar', split='test', **FAST)
    # tools/check_data.py collects it with the other problems instead.
    from mmdtl.datasets.vtab import read_split_file
    problems = []
    read_split_file(ann, osp.dirname(ann), 100, 'VTAB1k', problems=problems)
    assert len(problems) == 1 and f'{ann}, line 2 is not UTF-8' in problems[0]


def test_split_file_with_utf8_bom(cifar_root):
    ann = osp.join(cifar_root, 'cifar', 'test.txt')
    plain = VTAB1k(cifar_root, 'cifar', split='test', **FAST)
    with open(ann, 'rb') as f:
        content = f.read()
    with open(ann, 'wb') as f:
        f.write(b'\xef\xbb\xbf' + content)
    with_bom = VTAB1k(cifar_root, 'cifar', split='test', **FAST)
    assert [with_bom.get_data_info(i)['img_path'] for i in range(len(with_bom))] == \
        [plain.get_data_info(i)['img_path'] for i in range(len(plain))]


def test_lazy_init_defers_reading(tmp_path):
    # Metainfo is available without the data (e.g. for visualization).
    ds = VTAB1k(str(tmp_path), 'dtd', lazy_init=True)
    assert len(ds.CLASSES) == 47
    with pytest.raises(FileNotFoundError):
        ds.full_init()


def test_digits_writer(tmp_path):
    root = str(tmp_path)
    task_dir = write_digits_vtab(root, image_size=16)
    assert task_dir == osp.join(root, 'digits')
    lengths = {}
    for split in ('train800val200', 'train800', 'val200', 'test'):
        with open(osp.join(task_dir, f'{split}.txt')) as f:
            lengths[split] = sum(1 for line in f if line.strip())
    assert lengths == dict(train800val200=1000, train800=800, val200=200, test=797)

    trainval, train, val, test = (
        VTAB1k(root, 'digits', split=s, num_classes=10, **FAST)
        for s in ('train800val200', 'train800', 'val200', 'test'))
    paths = {s: {d['img_path'] for d in ds.load_data_list()}
             for s, ds in dict(trainval=trainval, train=train, val=val, test=test).items()}
    assert paths['trainval'] == paths['train'] | paths['val']
    assert not paths['train'] & paths['val'] and not paths['trainval'] & paths['test']
    assert len(paths['trainval'] | paths['test']) == 1797
    # Stratified: every digit is in every split.
    for ds in (train, val, test):
        assert set(ds.get_gt_labels().tolist()) == set(range(10))

    # Idempotent: a second call rewrites nothing.
    mtimes = {f: os.stat(osp.join(task_dir, f)).st_mtime_ns
              for f in ('train800val200.txt', 'test.txt', 'images/0000.png')}
    assert write_digits_vtab(root, image_size=16) == task_dir
    assert mtimes == {f: os.stat(osp.join(task_dir, f)).st_mtime_ns for f in mtimes}
    # An incomplete folder (or one of another image size) is not taken as done.
    from mmdtl.datasets.digits_vtab import _is_complete
    assert _is_complete(task_dir, 16) and not _is_complete(task_dir, 32)
    os.remove(osp.join(task_dir, 'val200.txt'))
    assert not _is_complete(task_dir, 16)


def test_build_with_pipeline(cifar_root):
    from mmpretrain.registry import DATASETS

    pipeline = [
        dict(type='LoadImageFromFile'),
        dict(type='Resize', scale=(32, 32)),
        dict(type='PackInputs'),
    ]
    ds = DATASETS.build(
        dict(type='VTAB1k', data_root=cifar_root, task='cifar', split='test', pipeline=pipeline,
             test_mode=True))
    assert isinstance(ds, VTAB1k)
    item = ds[1]
    assert tuple(item['inputs'].shape) == (3, 32, 32)
    assert item['data_samples'].gt_label.item() == 1
