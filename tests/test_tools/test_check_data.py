"""tools/check_data.py (mmdtl.datasets.check_data) on generated trees: clean
ones pass, every problem has file and line."""
import os
import os.path as osp

import pytest

from mmdtl.datasets.check_data import SUITE_ALIASES, SUITES
from mmdtl.suites.definitions import SUITES as RUN_SUITE_SUITES
from mmdtl.testing import make_dg_tree, make_few_shot_tree, make_vtab_tree


@pytest.fixture
def run(capsys, load_cli):
    """``run(*argv)``: tools/check_data.py's exit code and printed output."""
    cli = load_cli('tools/check_data.py')

    def run_cli(*argv):
        code = cli.main([str(a) for a in argv])
        return code, capsys.readouterr().out
    return run_cli


@pytest.fixture
def vtab_root(tmp_path):
    for task in ('cifar', 'dtd'):
        make_vtab_tree(str(tmp_path), task=task, image_size=4)
    return tmp_path


def test_clean_vtab_tree(run, vtab_root):
    code, out = run('vtab', '--data-root', vtab_root, '--names', 'cifar', 'dtd')
    assert code == 0, out
    assert 'cifar/train800val200.txt: 12 images, 8 classes' in out
    assert 'no problems (36 images listed)' in out


def test_vtab_missing_image_bad_label_unreadable(run, vtab_root):
    task_dir = vtab_root / 'cifar'
    os.remove(task_dir / 'images/test/000002.png')
    with open(task_dir / 'test.txt', 'a') as f:
        f.write('images/test/000000.png 100\n')
    (task_dir / 'images/val200/000001.png').write_bytes(b'not a png')
    code, out = run('vtab', '--data-root', vtab_root, '--names', 'cifar',
                    '--workers', 2)
    assert code == 1
    test_txt = osp.join(task_dir, 'test.txt')
    assert (f'image {task_dir}/images/test/000002.png does not exist (listed in {test_txt}, '
            'line 3)') in out
    assert f'label 100 in {test_txt}, line 7 is outside [0, 100)' in out
    # reported once, at its first listing (train800val200.txt is read first)
    assert (f'image {task_dir}/images/val200/000001.png cannot be read (listed in '
            f'{task_dir}/train800val200.txt, line 10)') in out
    assert '3 problem(s)' in out


def test_vtab_missing_split_and_inconsistent_union(run, vtab_root):
    os.remove(vtab_root / 'dtd' / 'val200.txt')
    with open(vtab_root / 'cifar' / 'train800val200.txt', 'a') as f:
        f.write('images/test/000000.png 0\n')
    code, out = run('vtab', '--data-root', vtab_root, '--names', 'cifar', 'dtd',
                    'svhn', '--no-verify')
    assert code == 1
    assert f'split file {vtab_root}/dtd/val200.txt does not exist' in out
    assert (f'{vtab_root}/cifar/train800val200.txt is not the lines of train800.txt plus '
            'those of val200.txt') in out
    assert f'task folder {vtab_root}/svhn does not exist' in out


def test_few_shot(run, tmp_path):
    ann_dir = make_few_shot_tree(str(tmp_path), name='oxford-pets', shots=(1, 2), seeds=(0, ),
                                 image_size=4)
    argv = ['few-shot', '--data-root', tmp_path, '--names', 'oxford-pets-FS', '--seeds', 0]
    code, out = run(*argv, '--shots', 1, 2)
    assert code == 0, out
    code, out = run(*argv, '--shots', 1, 4)
    assert code == 1 and 'num_shot_4.seed_0 does not exist' in out
    # one class short in the 2-shot list
    path = osp.join(ann_dir, 'train_meta.list.num_shot_2.seed_0')
    with open(path) as f:
        lines = f.readlines()
    with open(path, 'w') as f:
        f.writelines(lines[1:])
    code, out = run(*argv, '--shots', 2, '--no-verify')
    assert code == 1
    assert f'{path} should list 2 images of each of the 37 classes; class 0: 1.' in out


def test_domain_generalization(run, tmp_path):
    make_dg_tree(str(tmp_path), seeds=(0, ), image_size=4)
    code, out = run('dg', '--data-root', tmp_path, '--names', 'imagenetv2',
                    'imagenet-a', 'imagenet-r')
    assert code == 0, out
    assert 'imagenet-adversarial covers 2 of the 1000 classes' in out
    # the tiny tree has 2 training images for 4 classes, not 16 for 1000
    code, out = run('domain-generalization', '--data-root', tmp_path, '--names',
                    'imagenet', '--seeds', 0)
    assert code == 1
    assert 'train_meta.list.num_shot_16.seed_0 should list 16 images of each of the 1000 ' \
        'classes; class 0: 2, class 1: 2' in out


def test_truncated_jpeg_is_reported(run, vtab_root):
    """PIL's verify() passes a truncated JPEG; the check must decode it whole."""
    import numpy as np
    from PIL import Image
    task_dir = vtab_root / 'cifar'
    jpeg = task_dir / 'images/test/000001.png'  # the name is what the split lists
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(jpeg, format='JPEG')
    jpeg.write_bytes(jpeg.read_bytes()[:-400])
    code, out = run('vtab', '--data-root', vtab_root, '--names', 'cifar')
    assert code == 1, out
    assert f'image {task_dir}/images/test/000001.png cannot be read' in out
    assert 'truncated' in out


def test_suite_aliases_of_run_suite_are_accepted():
    for suite, (kind, _) in RUN_SUITE_SUITES.items():
        if kind not in ('vtab', 'few-shot', 'dg'):
            continue  # e.g. the demo's miniature suite has its own data tool
        assert suite in SUITES or suite in SUITE_ALIASES, suite
