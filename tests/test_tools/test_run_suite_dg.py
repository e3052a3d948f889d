"""tools/run_suite.py domain-generalization: the paper's protocol (one model per
target, each with its own lr) by default, one model on all targets as an option."""
import json
import os
import os.path as osp
from pathlib import Path

import pytest

from mmdtl.datasets.domain_generalization import DG_TARGETS
from mmdtl.suites.collect import collect
from mmdtl.suites.definitions import plan_runs, suite_configs

REPO = Path(__file__).resolve().parents[2]

TARGETS = {'imagenet': 'imagenet', 'imagenet-v2': 'imagenetv2',
           'imagenet-sketch': 'imagenet-sketch', 'imagenet-a': 'imagenet-adversarial',
           'imagenet-r': 'imagenet-rendition'}


def test_default_plan_is_one_run_per_target_and_seed(tmp_path):
    configs = suite_configs('domain-generalization', None)
    stems = sorted(osp.basename(c)[:-3] for c in configs)
    assert stems == sorted(f'vit-b_{m}_{t}' for m in ('dtl', 'dtl+') for t in TARGETS)
    runs = plan_runs('domain-generalization', configs, str(tmp_path), None, [0, 1, 2],
                               False, [], 'D')
    assert len(runs) == 10 * 3
    by_stem = {}
    for run in runs:
        by_stem.setdefault(run.stem, []).append(run)
        assert run.shot == 16 and not run.uses_best  # the last epoch is tested
        assert 'shot=16' in run.options and f'seed={run.seed}' in run.options
        assert 'test_dataloader.dataset.data_root=D' in run.options
        assert run.run_dir == str(tmp_path / 'domain-generalization' / run.stem /
                                  f'shot16_seed{run.seed}')
    for target, name in TARGETS.items():
        for method in ('vit-b_dtl', 'vit-b_dtl+'):
            seeds = by_stem[f'{method}_{target}']
            assert [r.seed for r in seeds] == [0, 1, 2]
            assert {(r.method, r.dataset) for r in seeds} == {(method, name)}


def test_all_targets_option(tmp_path):
    configs = suite_configs('domain-generalization-all-targets', None)
    runs = plan_runs('domain-generalization-all-targets', configs, str(tmp_path),
                               None, [0], False, [], None)
    assert sorted(r.stem for r in runs) == ['vit-b_dtl+_all-targets', 'vit-b_dtl_all-targets']
    assert {r.dataset for r in runs} == {','.join(DG_TARGETS)}
    assert {r.method for r in runs} == {'vit-b_dtl', 'vit-b_dtl+'}


def test_per_target_runs_fill_one_column_per_method(tmp_path):
    """results.json of the per-target runs (as tools/test.py's metrics) make the
    paper's table: a method's targets merge into its column, seeds averaged."""
    configs = [str(REPO / f'configs/dtl/domain_generalization/vit-b_dtl+_{t}.py')
               for t in ('imagenet', 'imagenet-a', 'imagenet-r')]
    configs.append(str(REPO / 'configs/dtl/domain_generalization/vit-b_dtl_imagenet.py'))
    runs = plan_runs('domain-generalization', configs, str(tmp_path), None, [0, 1],
                               False, [], None)
    metrics = {
        ('vit-b_dtl+_imagenet', 0): {'accuracy/imagenet/top1': 70.},
        ('vit-b_dtl+_imagenet', 1): {'accuracy/imagenet/top1': 72.},
        ('vit-b_dtl+_imagenet-a', 0): {'accuracy/imagenet-adversarial/top1': 20.,
                                       'accuracy/imagenet-adversarial/top1_masked': 40.},
        ('vit-b_dtl+_imagenet-a', 1): {'accuracy/imagenet-adversarial/top1': 22.,
                                       'accuracy/imagenet-adversarial/top1_masked': 44.},
        ('vit-b_dtl+_imagenet-r', 0): {'accuracy/imagenet-rendition/top1': 30.,
                                       'accuracy/imagenet-rendition/top1_masked': 50.},
        ('vit-b_dtl_imagenet', 1): {'accuracy/imagenet/top1': 60.},
    }
    for run in runs:
        if (run.stem, run.seed) in metrics:
            os.makedirs(run.run_dir)
            with open(osp.join(run.run_dir, 'results.json'), 'w') as f:
                json.dump(dict(metrics=metrics[run.stem, run.seed]), f)
    table, header, rows = collect('domain-generalization', runs, [0, 1], None)
    assert header == ['test set', 'vit-b_dtl+', 'vit-b_dtl']
    by_label = {r[0]: r[1:] for r in rows}
    assert by_label['ImageNet'] == [(71., pytest.approx(2 ** 0.5), 2), (60., 0., 1)]
    assert by_label['ImageNet-A (200 classes)'][0] == (42., pytest.approx(2 * 2 ** 0.5), 2)
    assert by_label['ImageNet-A (1000 classes)'][0][0] == 21.
    assert by_label['ImageNet-R (200 classes)'] == [(50., 0., 1), None]
    assert by_label['ImageNet-Sketch'] == [None, None]
    assert '| ImageNet | 71.0 ±1.4 | 60.0* |' in table
    assert '| ImageNet-R (200 classes) | 50.0* | - |' in table


def test_dry_run_lists_the_targets(load_cli, tmp_path, capsys):
    argv = ['domain-generalization', '--work-dir', str(tmp_path / 'wd'), '--dry-run',
            '--seeds', '0']
    assert load_cli('tools/run_suite.py').main(argv) == 0
    out = capsys.readouterr().out
    assert 'Suite domain-generalization: 10 run(s) of 10 config(s)' in out
    for target in TARGETS:
        assert f'vit-b_dtl+_{target} shot=16 seed=0: would train' in out
    assert not (tmp_path / 'wd').exists()
