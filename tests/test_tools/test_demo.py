"""The demo (mmdtl.demo, tools/misc/transfer_demo.py): a tiny end-to-end run on
the shipped checkpoint, its table arithmetic, and the lr sweep's config writer."""
import csv
import json
import os.path as osp
from collections import OrderedDict

import pytest

import mmdtl.demo.sweep as sweep
import mmdtl.demo.transfer as demo
from mmdtl.datasets.mini_vtab import MINI_VTAB_TASKS
from mmdtl.demo import run_demo
from mmdtl.demo.runs import CHECKPOINT
from mmdtl.suites.tables import mini_vtab_table
from mmdtl.testing import make_fashion_mnist_files


def test_every_method_and_task_has_a_config():
    from mmengine.config import Config

    for method in demo.METHODS:
        for task, num_classes in MINI_VTAB_TASKS.items():
            cfg = Config.fromfile(demo.config_path(method, task))
            assert cfg.model.head.num_classes == num_classes
            for loader in ('train_dataloader', 'test_dataloader'):
                assert cfg[loader].dataset.task == task
                assert cfg[loader].dataset.num_classes == num_classes
            assert cfg.optim_wrapper.optimizer.lr == cfg.lr
            backbone = cfg.model.backbone
            if method == 'dtl+random-trunk':
                assert backbone.init_cfg is None and backbone.allow_random_trunk
            else:
                inner = backbone.module if method == 'lora' else backbone
                assert inner.init_cfg.checkpoint == CHECKPOINT


def record(method, task, seed, top1, **extra):
    return dict(method=method, task=task, seed=seed, top1=top1, trainable_backbone=10,
                activation_mb=1.0, tensor_peak_mb=2.0, train_s=3.0, **extra)


def test_summarize_group_means_and_std():
    records = [
        record('dtl', 'fashion', 0, 80.), record('dtl', 'digits', 0, 90.),
        record('dtl', 'digits_rot', 0, 60.),
        record('dtl', 'fashion', 1, 82.), record('dtl', 'digits', 1, 94.),
        record('dtl', 'digits_rot', 1, 70.),
        record('full', 'digits', 0, 99.),
    ]
    rows = demo.summarize(records, list(MINI_VTAB_TASKS))
    assert list(rows) == ['full', 'dtl']  # table order, not record order
    dtl = rows['dtl']
    assert dtl['fashion'] == (81., pytest.approx(2 ** .5), 2)
    # per seed: natural (80+90)/2=85 and (82+94)/2=88; Mean = (85+60)/2, (88+70)/2
    assert dtl['natural'][:1] == (86.5, ) and dtl['natural'][1] == pytest.approx(4.5 ** .5)
    assert dtl['structured'][0] == 65.
    assert dtl['mean'][0] == pytest.approx((72.5 + 79.) / 2)
    assert dtl['mean'][1] == pytest.approx(abs(72.5 - 79.) / 2 ** .5)
    # a method without every task has no group or overall mean
    assert rows['full']['digits'] == (99., 0., 1)
    assert rows['full']['natural'] is None and rows['full']['mean'] is None
    table = demo.to_markdown(rows, list(MINI_VTAB_TASKS))
    assert '| DTL | 81.0 ± 1.4 | 92.0 ± 2.8 | 65.0 ± 7.1 | 86.5 ± 2.1 | 65.0 ± 7.1 |' in table


def test_sweep_writes_the_best_lr(tmp_path):
    src = demo.config_path('dtl+', 'digits')
    config = tmp_path / 'config.py'
    base = osp.join(osp.dirname(src), '_base_') + '/'
    config.write_text(open(src).read().replace('./_base_/', base))
    grid = OrderedDict([(3e-3, 90.5), (1e-2, 92.0), (3e-2, 92.0)])
    best = sweep.best_lr(grid)
    assert best == 1e-2  # ties: the smaller lr
    sweep.write_lr(str(config), grid, best)
    text = config.read_text()
    assert 'lr = 0.01\n' in text and '0.003: 90.5, 0.01: 92.0, 0.03: 92.0' in text
    sweep.write_lr(str(config), OrderedDict([(3e-3, 95.)]), 3e-3)  # rewritable
    from mmengine.config import Config
    assert Config.fromfile(str(config)).optim_wrapper.optimizer.lr == 3e-3
    config.write_text('lr = 1\n')
    with pytest.raises(SystemExit, match='expected one block'):
        sweep.write_lr(str(config), grid, best)


def test_demo_end_to_end_on_the_shipped_checkpoint(load_cli, tmp_path, capsys):
    """Two methods on one task, one short epoch: the real Runner, the meters,
    the table, the CSV and the plot; a second call reuses the runs, from the
    command line and from Python."""
    cli = load_cli('tools/misc/transfer_demo.py')
    src = make_fashion_mnist_files(tmp_path / 'src')
    argv = ['--methods', 'linear', 'dtl+', '--tasks', 'digits', '--work-dir',
            str(tmp_path / 'demo'), '--data-root', str(tmp_path / 'data'), '--fashion-mnist',
            src, '--cfg-options', 'train_cfg.max_epochs=1', 'train_dataloader.dataset.indices=64',
            'test_dataloader.dataset.indices=50']
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert '[ 1/2] seed 0 linear' in out and '[ 2/2] seed 0 dtl+' in out

    results = {}
    for method in ('linear', 'dtl+'):
        path = tmp_path / 'demo' / 'seed0' / f'vit-demo_{method}_digits' / 'result.json'
        results[method] = json.loads(path.read_text())
    linear, dtl = results['linear'], results['dtl+']
    # trainable backbone parameters: none for the probe; DTL+ (96 dims, rank 2,
    # 6 taps, 3x3 depthwise conv without bias): A and B 2*96 each per tap, conv 96*9
    assert linear['trainable_backbone'] == 0
    assert dtl["trainable_backbone"] == 6 * 2 * (2 * 96) + 96 * 9
    assert linear['trainable_total'] == 96 * 10 + 10
    # a frozen trunk saves nothing for backward (the probe keeps only what the
    # head and the loss need: 32 x 96 features and the logits); DTL+ its suffix
    assert linear['activation_mb'] < 0.02 < dtl['activation_mb']
    assert 0 < linear['tensor_peak_mb'] < dtl['tensor_peak_mb']

    with open(tmp_path / 'demo' / 'demo.csv') as f:
        rows = {row['method']: row for row in csv.DictReader(f)}
    assert set(rows) == {'linear', 'dtl+'}
    for method, result in results.items():
        assert float(rows[method]['digits']) == pytest.approx(result['top1'], abs=0.005)
    md = (tmp_path / 'demo' / 'demo.md').read_text()
    assert f'| DTL+ | {dtl["top1"]:.1f} |' in md
    assert (tmp_path / 'demo' / 'demo.png').read_bytes()[:4] == b'\x89PNG'

    assert cli.main(argv) == 0  # same config, seed and backbone: reused
    assert capsys.readouterr().out.count('(reused;') == 2
    # the same from Python (a dict of overrides); what it returns is the table
    rows = run_demo(['linear', 'dtl+'], ['digits'], work_dir=str(tmp_path / 'demo'),
                    data_root=str(tmp_path / 'data'), fashion_source=src,
                    cfg_options={'train_cfg.max_epochs': 1,
                                 'train_dataloader.dataset.indices': 64,
                                 'test_dataloader.dataset.indices': 50})
    assert capsys.readouterr().out.count('(reused;') == 2
    assert rows['dtl+']['digits'] == (dtl['top1'], 0., 1)
    assert rows['linear']['trainable_backbone'] == 0
    assert cli.main(argv[:-1] + ['test_dataloader.dataset.indices=40']) == 0
    assert capsys.readouterr().out.count('(reused;') == 0  # another config: rerun


def test_run_suite_mini_vtab(load_cli, tmp_path, capsys):
    """The same configs as a run_suite suite (tools/train.py + tools/test.py per
    config): planned in table order, and its table's group means."""
    run_suite = load_cli('tools/run_suite.py')
    assert run_suite.main(['mini-vtab', '--dry-run', '--work-dir', str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert 'Suite mini-vtab: 18 run(s) of 18 config(s)' in out
    assert out.count('would train') == 18
    header, rows = mini_vtab_table(OrderedDict(
        dtl={'fashion': 80., 'digits': 90., 'digits_rot': 60.}, full={'digits': 99.}))
    assert header == ['method', 'fashion', 'digits', 'digits_rot', 'Natural', 'Structured',
                      'Mean']
    assert rows[0] == ['dtl', 80., 90., 60., 85., 60., 72.5]
    assert rows[1] == ['full', None, 99., None, None, None, None]


def test_sweep_extends_a_grid_whose_best_lr_is_on_its_edge():
    assert sweep.next_lr(OrderedDict([(3e-3, 80.), (1e-2, 85.), (3e-2, 90.)])) == \
        pytest.approx(9e-2)
    assert sweep.next_lr(OrderedDict([(1e-4, 90.), (3e-4, 80.), (1e-3, 70.)])) == \
        pytest.approx(1e-4 / 3)
    assert sweep.next_lr(OrderedDict([(1e-4, 80.), (3e-4, 90.), (1e-3, 70.)])) is None
