"""The demo's mini VTAB-1k writer: layout, disjoint splits, labels, Fashion-MNIST files."""
import gzip
import os.path as osp
import shutil

import numpy as np
import pytest

from mmdtl.datasets.mini_vtab import (
    FASHION_MNIST_FILES,
    MINI_VTAB_GROUPS,
    MINI_VTAB_TASKS,
    prepare_fashion_mnist,
    read_idx,
    write_mini_vtab,
)
from mmdtl.testing import make_fashion_mnist_files

SPLITS = ('train800val200', 'train800', 'val200', 'test')


def read_split(task_dir: str, split: str):
    with open(osp.join(task_dir, f'{split}.txt')) as f:
        return [(p, int(label)) for p, label in (line.split() for line in f if line.strip())]


def load_png(task_dir: str, relpath: str) -> np.ndarray:
    from PIL import Image
    with Image.open(osp.join(task_dir, relpath)) as img:
        assert img.mode == 'L' and img.size == (28, 28)
        return np.asarray(img)


@pytest.fixture(scope='module')
def mini_vtab(tmp_path_factory):
    src = make_fashion_mnist_files(tmp_path_factory.mktemp('fashion'))
    root = str(tmp_path_factory.mktemp('mini-vtab'))
    return src, root, write_mini_vtab(root, fashion_source=src)


def test_layout_splits_and_labels(mini_vtab):
    from sklearn.datasets import load_digits

    src, root, dirs = mini_vtab
    assert list(dirs) == list(MINI_VTAB_TASKS) == ['fashion', 'digits', 'digits_rot']
    assert sum(MINI_VTAB_GROUPS.values(), []) == list(MINI_VTAB_TASKS)
    test_sizes = dict(fashion=2000, digits=797, digits_rot=797)
    for task, task_dir in dirs.items():
        assert task_dir == osp.join(root, task)
        splits = {s: read_split(task_dir, s) for s in SPLITS}
        assert [len(splits[s]) for s in SPLITS] == [1000, 800, 200, test_sizes[task]]
        paths = {s: {p for p, _ in lines} for s, lines in splits.items()}
        assert len(paths['train800'] | paths['val200'] | paths['test']) == \
            800 + 200 + test_sizes[task], f'{task}: splits overlap'
        assert splits['train800val200'] == splits['train800'] + splits['val200']
        labels = [label for lines in splits.values() for _, label in lines]
        assert set(labels) == set(range(MINI_VTAB_TASKS[task]))
        # stratified: every class in val200
        assert {label for _, label in splits['val200']} == set(range(MINI_VTAB_TASKS[task]))

    # fashion: the source's test images and labels, pixel for pixel
    images = read_idx(osp.join(src, 't10k-images-idx3-ubyte.gz'))
    for relpath, label in read_split(dirs['fashion'], 'test')[:20]:
        index = int(osp.basename(relpath)[:-4])
        assert label == index % 10
        np.testing.assert_array_equal(load_png(dirs['fashion'], relpath), images[index])

    # digits: sklearn's labels; digits_rot: the same image split, each image
    # the digit rotated by label x 90 degrees
    targets = load_digits().target
    for relpath, label in read_split(dirs['digits'], 'train800')[:20]:
        assert label == targets[int(osp.basename(relpath)[:-4])]
    for split in ('train800', 'val200', 'test'):
        assert {p for p, _ in read_split(dirs['digits_rot'], split)} == \
            {p for p, _ in read_split(dirs['digits'], split)}
    for relpath, label in read_split(dirs['digits_rot'], 'test')[:20]:
        np.testing.assert_array_equal(load_png(dirs['digits_rot'], relpath),
                                      np.rot90(load_png(dirs['digits'], relpath), label))


def test_reads_with_vtab1k(mini_vtab):
    from mmdtl.datasets import VTAB1k

    _, root, _ = mini_vtab
    dataset = VTAB1k(root, 'digits_rot', split='val200', num_classes=4,
                     pipeline=[dict(type='LoadImageFromFile', color_type='grayscale'),
                               dict(type='PackInputs')])
    assert len(dataset) == 200
    assert dataset[0]['inputs'].shape == (1, 28, 28)


def test_idempotent_and_rewritten_for_another_seed(mini_vtab, tmp_path):
    src, root, dirs = mini_vtab
    split_file = osp.join(dirs['digits'], 'train800.txt')
    before = open(split_file).read()
    mtime = osp.getmtime(split_file)
    write_mini_vtab(root, fashion_source=src)
    assert osp.getmtime(split_file) == mtime  # kept
    other = str(tmp_path / 'other')
    shutil.copytree(root, other)
    write_mini_vtab(other, fashion_source=src, seed=1)  # another seed: rewritten
    assert open(osp.join(other, 'digits', 'train800.txt')).read() != before


def test_prepare_fashion_mnist(tmp_path):
    src = make_fashion_mnist_files(tmp_path / 'src', num_test=20, num_train=30)
    dst = str(tmp_path / 'data')
    assert prepare_fashion_mnist(dst, src) == dst
    for name in FASHION_MNIST_FILES:  # uncompressed, as mmpretrain's FashionMNIST reads them
        with open(osp.join(dst, name), 'rb') as f, gzip.open(osp.join(src, name + '.gz')) as g:
            assert f.read() == g.read()
    with pytest.raises(FileNotFoundError, match='apt-get install dataset-fashion-mnist'):
        prepare_fashion_mnist(str(tmp_path / 'empty'), str(tmp_path / 'nowhere'))


def test_read_idx_rejects_bad_files(tmp_path):
    bad = tmp_path / 'bad'
    bad.write_bytes(b'\x00\x00\x0d\x01' + (3).to_bytes(4, 'big') + b'\x00' * 12)
    with pytest.raises(ValueError, match='not an IDX file of unsigned bytes'):
        read_idx(str(bad))
    short = tmp_path / 'short'
    short.write_bytes(b'\x00\x00\x08\x01' + (5).to_bytes(4, 'big') + b'\x01\x02')
    with pytest.raises(ValueError, match='truncated'):
        read_idx(str(short))
