"""tools/run_suite.py: two tiny VTAB runs end to end, skip / resume, and the table arithmetic."""
import csv
import json
import math
import os
import os.path as osp
import time
from pathlib import Path

import pytest

import mmdtl.suites.runner
from mmdtl.datasets.vtab import VTAB1K_GROUPS, VTAB1K_TASKS
from mmdtl.suites.collect import collect
from mmdtl.suites.definitions import plan_runs
from mmdtl.suites.tables import (
    dg_table,
    few_shot_table,
    to_csv,
    to_markdown,
    vtab_summary,
    vtab_table,
)
from mmdtl.testing import make_vtab_tree

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def run_suite(load_cli):
    """The command line (main, parse_args) of tools/run_suite.py."""
    return load_cli('tools/run_suite.py')

CONFIGS = ['configs/dtl/vtab/vit-b_dtl+_cifar.py', 'configs/dtl/vtab/vit-b_dtl+_dtd.py']


def tiny_options():
    """Shrink the released ViT-B recipe to a CPU smoke run: DeiT-tiny on 32x32, 1 epoch."""
    opts = [
        'model.backbone.arch=deit-tiny', 'model.backbone.img_size=32',
        'model.backbone.init_cfg=None', 'model.backbone.allow_random_trunk=True',
        'model.head.in_channels=192', 'train_cfg.max_epochs=1',
        'optim_wrapper.type=OptimWrapper'
    ]
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        opts += [f'{loader}.batch_size=4', f'{loader}.num_workers=0',
                 f'{loader}.persistent_workers=False', f'{loader}.dataset.pipeline.1.scale=(32,32)']
    return opts


def test_two_configs_end_to_end_then_skip(run_suite, tmp_path, capsys, monkeypatch):
    """Both runs at the same time, each on its own (fake: no GPU here) device."""
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    data = tmp_path / 'data'
    for task in ('cifar', 'dtd'):
        make_vtab_tree(str(data), task=task, image_size=8)
    spans = {}
    real_execute = mmdtl.suites.runner.execute

    def timed(cmd, log_file, *args, **kwargs):  # the real tools, timed
        start = time.time()
        rc = real_execute(cmd, log_file, *args, **kwargs)
        spans[log_file] = (start, time.time())
        return rc

    monkeypatch.setattr(mmdtl.suites.runner, 'execute', timed)
    argv = ['vtab-vit-dtl+', '--data-root', str(data), '--work-dir', str(tmp_path / 'wd'),
            '--devices', '0', '1', '--configs', *CONFIGS, '--cfg-options', *tiny_options()]
    assert run_suite.main(argv) == 0
    out = capsys.readouterr().out
    suite_dir = tmp_path / 'wd' / 'vtab-vit-dtl+'
    assert '[1/2] vit-b_dtl+_cifar: training in' in out
    assert '[2/2] vit-b_dtl+_dtd: testing epoch_1.pth' in out
    logs = [str(suite_dir / stem / 'run_suite_train.log') for stem in ('vit-b_dtl+_cifar',
                                                                        'vit-b_dtl+_dtd')]
    (a0, a1), (b0, b1) = spans[logs[0]], spans[logs[1]]
    assert a0 < b1 and b0 < a1  # the two trainings overlapped in time
    firsts = {open(log).readline().split()[1] for log in logs}  # "$ CUDA_VISIBLE_DEVICES=0 ..."
    assert firsts == {'CUDA_VISIBLE_DEVICES=0', 'CUDA_VISIBLE_DEVICES=1'}
    assert 'Batch: global 4 = 1 process(es) x 4 per process' in open(logs[0]).read()
    records = {}
    for stem in ('vit-b_dtl+_cifar', 'vit-b_dtl+_dtd'):
        with open(suite_dir / stem / 'results.json') as f:
            records[stem] = json.load(f)
        assert set(records[stem]['metrics']) == {'accuracy/top1', 'accuracy/top5'}
        assert records[stem]['checkpoint'].endswith(f'{stem}/epoch_1.pth')
    assert records['vit-b_dtl+_dtd']['dataset'] == 'dtd'

    md = (suite_dir / 'results.md').read_text()
    cifar = records['vit-b_dtl+_cifar']['metrics']['accuracy/top1']
    assert f'| vit-b_dtl+ | {cifar:.1f} | - |' in md
    with open(suite_dir / 'results.csv') as f:
        rows = list(csv.reader(f))
    assert rows[0][:4] == ['method', 'cifar', 'caltech101', 'dtd']
    assert rows[1][1] == f'{cifar:.2f}' and rows[1][2] == ''

    # Re-running skips both (no training, no test), and the table is the same.
    assert run_suite.main(argv) == 0
    out = capsys.readouterr().out
    assert out.count('done, skipped') == 2 and 'training' not in out
    assert (suite_dir / 'results.md').read_text() == md

    # An interrupted run (checkpoint, no results) is resumed; a trained one only tested.
    os.remove(suite_dir / 'vit-b_dtl+_cifar' / 'results.json')
    os.remove(suite_dir / 'vit-b_dtl+_cifar' / 'train_done.json')
    os.remove(suite_dir / 'vit-b_dtl+_dtd' / 'results.json')
    assert run_suite.main(argv + ['--dry-run']) == 0
    out = capsys.readouterr().out
    assert '[1/2] vit-b_dtl+_cifar: would resume:' in out
    assert f'--work-dir {suite_dir}/vit-b_dtl+_cifar --resume --cfg-options' in out
    assert '[2/2] vit-b_dtl+_dtd: would test' in out and 'vit-b_dtl+_dtd: would train' not in out


def test_dry_run_few_shot_and_val_mode(run_suite, tmp_path, capsys):
    wd = tmp_path / 'wd'
    argv = ['few-shot', '--work-dir', str(wd), '--dry-run', '--shots', '1', '4', '--seeds', '2',
            '--configs', 'configs/dtl/few_shot/vit-b_dtl_food101.py', '--gpus-per-run', '2']
    assert run_suite.main(argv) == 0
    out = capsys.readouterr().out
    assert '[2/2] vit-b_dtl_food101 shot=4 seed=2: would train:' in out
    assert (f'dist_train.sh {REPO}/configs/dtl/few_shot/vit-b_dtl_food101.py 2 --work-dir '
            f'{wd}/few-shot/vit-b_dtl_food101 --cfg-options shot=4 seed=2') in out
    assert 'dist_test.sh' in out and '<checkpoint> 2 --work-dir' in out
    assert not wd.exists()  # a dry run writes nothing

    assert run_suite.main(['vtab-swin-dtl', '--work-dir', str(wd), '--dry-run', '--val',
                           '--data-root', 'D']) == 0
    out = capsys.readouterr().out
    assert 'Suite vtab-swin-dtl: 19 run(s)' in out
    assert f'{wd}/vtab-swin-dtl_val/swin-b_dtl_smallnorb_ele' in out
    assert ('train_dataloader.dataset.data_root=D val_dataloader.dataset.data_root=D '
            'test_dataloader.dataset.data_root=D train_dataloader.dataset.split=train800 '
            'val_dataloader.dataset.split=val200 test_dataloader.dataset.split=val200') in out
    # VTAB runs are listed in the order of the tables
    assert out.index('swin-b_dtl_cifar:') < out.index('swin-b_dtl_caltech101:') < \
        out.index('swin-b_dtl_smallnorb_ele:')

    with pytest.raises(SystemExit):
        run_suite.parse_args(['few-shot', '--val'])
    with pytest.raises(SystemExit):
        run_suite.parse_args(['vtab-vit-dtl', '--shots', '4'])


def test_vtab_arithmetic():
    per_task = {task: float(i) for i, task in enumerate(VTAB1K_TASKS)}  # 0 .. 18
    summary = vtab_summary(per_task)
    assert summary['natural'] == pytest.approx(3.0)  # tasks 0..6
    assert summary['specialized'] == pytest.approx(8.5)  # 7..10
    assert summary['structured'] == pytest.approx(14.5)  # 11..18
    assert summary['mean'] == pytest.approx((3.0 + 8.5 + 14.5) / 3)  # the paper's Mean
    assert summary['mean_tasks'] == pytest.approx(9.0)  # 19-task mean differs
    del per_task['kitti']
    partial = vtab_summary(per_task)
    assert partial['structured'] is None and partial['mean'] is None
    assert partial['natural'] == pytest.approx(3.0)
    header, rows = vtab_table({'m': per_task})
    assert header[-5:] == ['Natural', 'Specialized', 'Structured', 'Mean', 'Mean (tasks)']
    assert len(header) == 1 + 19 + 5
    assert rows[0][header.index('kitti')] is None
    assert set(VTAB1K_GROUPS) == {'natural', 'specialized', 'structured'}


def test_few_shot_and_dg_arithmetic(tmp_path):
    results = {
        ('vit-b_dtl+', 'food101', 1): {0: 50., 1: 54., 2: 58.},
        ('vit-b_dtl+', 'food101', 16): {0: 80.},
        ('vit-b_dtl+', 'fgvc-aircraft', 1): {0: 20., 1: 30.},
        ('vit-b_dtl+', 'fgvc-aircraft', 16): {},
    }
    header, rows = few_shot_table(results, [1, 16])
    assert header == ['method', 'dataset', '1-shot', '16-shot']
    # datasets in the paper's order, then the average over datasets
    assert [r[1] for r in rows] == ['fgvc-aircraft', 'food101', 'average']
    assert rows[0][2] == (25., pytest.approx(math.sqrt(50)), 2) and rows[0][3] is None
    assert rows[1][2] == (54., 4., 3)
    assert rows[2][2] == (pytest.approx(39.5), None, None)
    assert rows[2][3] is None  # aircraft has no 16-shot result
    md = to_markdown(header, rows, expected_n=3)
    assert '| vit-b_dtl+ | fgvc-aircraft | 25.0 ±7.1* | - |' in md
    assert '| vit-b_dtl+ | food101 | 54.0 ±4.0 | 80.0* |' in md
    assert '| vit-b_dtl+ | average | 39.5 | - |' in md
    to_csv(str(tmp_path / 'fs.csv'), header, rows)
    with open(tmp_path / 'fs.csv') as f:
        table = list(csv.reader(f))
    assert table[0] == ['method', 'dataset', '1-shot', '1-shot std', '1-shot n', '16-shot',
                        '16-shot std', '16-shot n']
    assert table[2] == ['vit-b_dtl+', 'food101', '54.00', '4.00', '3', '80.00', '0.00', '1']

    metrics = {s: {'accuracy/imagenet/top1': 70. + s,
                   'accuracy/imagenet-adversarial/top1': 10.,
                   'accuracy/imagenet-adversarial/top1_masked': 30. + 2 * s} for s in (0, 1, 2)}
    header, rows = dg_table({'vit-b_dtl+': metrics, 'vit-b_dtl': {}})
    assert header == ['test set', 'vit-b_dtl+', 'vit-b_dtl']
    by_label = {r[0]: r[1:] for r in rows}
    assert list(by_label) == ['ImageNet', 'ImageNet-V2', 'ImageNet-Sketch',
                              'ImageNet-A (200 classes)', 'ImageNet-A (1000 classes)',
                              'ImageNet-R (200 classes)', 'ImageNet-R (1000 classes)']
    assert by_label['ImageNet'] == [(71., 1., 3), None]
    assert by_label['ImageNet-A (200 classes)'][0] == (32., 2., 3)
    assert by_label['ImageNet-A (1000 classes)'][0] == (10., 0., 3)
    assert by_label['ImageNet-V2'] == [None, None]


def test_collect_reads_run_dirs(tmp_path):
    """Hand-written results.json files in the run folders make the few-shot table."""
    configs = [str(REPO / 'configs/dtl/few_shot/vit-b_dtl+_oxford-pets.py')]
    runs = plan_runs('few-shot', configs, str(tmp_path), [2], [0, 1], False, [], None)
    assert [(r.shot, r.seed) for r in runs] == [(2, 0), (2, 1)]
    assert runs[1].run_dir == str(tmp_path / 'few-shot' / 'vit-b_dtl+_oxford-pets' /
                                  'shot2_seed1')
    assert runs[0].uses_best and runs[0].dataset == 'oxford-pets'
    for run, top1 in zip(runs, (60., 70.)):
        os.makedirs(run.run_dir)
        with open(osp.join(run.run_dir, 'results.json'), 'w') as f:
            json.dump(dict(metrics={'accuracy/top1': top1}), f)
    table, header, rows = collect('few-shot', runs, [0, 1], [2])
    assert '| vit-b_dtl+ | oxford-pets | 65.0 ±7.1 |' in table
    assert rows[-1][2][0] == 65.  # average over the (one) dataset
