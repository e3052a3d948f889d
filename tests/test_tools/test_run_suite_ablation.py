"""tools/run_suite.py ablation suites: the plan (settings x tasks x seeds, seed
by seed), the table with its memory columns and Pareto front, and --jobs."""
import csv
import json
import os
import os.path as osp
from pathlib import Path

import pytest

from mmdtl.suites.collect import collect_ablation
from mmdtl.suites.definitions import RESULTS, TOP1, plan_runs, suite_configs, suite_settings
from mmdtl.suites.launch import Launch, plan_launches, train_command
from mmdtl.suites.runner import last_validation


@pytest.fixture
def run_suite(load_cli):
    """The command line (parse_args) of tools/run_suite.py."""
    return load_cli('tools/run_suite.py')


def plan(tmp_path, seeds=(0, 1), configs=None):
    configs = suite_configs('ablation-mini-vtab', configs)
    return plan_runs('ablation-mini-vtab', configs, str(tmp_path), None, list(seeds),
                               False, [], 'data/mini-vtab')


def test_plan_is_every_setting_task_and_seed_seed_by_seed(tmp_path):
    runs = plan(tmp_path)
    assert len(runs) == 15 * 3 * 2
    assert [run.seed for run in runs] == [0] * 45 + [1] * 45
    assert {run.dataset for run in runs} == {'fashion', 'digits', 'digits_rot'}
    by_label = {run.label: run for run in runs}
    run = by_label['vit-demo_dtl+_fashion [taps every 2] seed=1']
    assert run.options[-2:] == ['model.backbone.csn.taps=[0,2,4]', 'randomness.seed=1']
    assert run.run_dir == osp.join(str(tmp_path), 'ablation-mini-vtab', 'taps-every-2',
                                   'vit-demo_dtl+_fashion', 'seed1')
    assert 'train_dataloader.dataset.data_root=data/mini-vtab' in run.options
    # the options reach tools/train.py
    cmd = train_command(run, Launch(), resume=False)
    assert cmd[-2:] == run.options[-2:]


def test_table_memory_and_front_from_finished_runs(tmp_path):
    keep = {'base', 'M=5', 'rank=1'}
    runs = [r for r in plan(tmp_path, seeds=(0, 1)) if r.setting in keep]
    top1 = {'base': 90.0, 'M=5': 85.0, 'rank=1': 80.0}
    for run in runs:
        if run.setting == 'rank=1' and run.seed == 1:
            continue  # unfinished: its Mean uses seed 0 only
        os.makedirs(run.run_dir)
        with open(osp.join(run.run_dir, RESULTS), 'w') as f:
            json.dump(dict(metrics={TOP1: top1[run.setting] + run.seed}), f)
    suite_dir = osp.join(str(tmp_path), 'ablation-mini-vtab')
    text = collect_ablation('ablation-mini-vtab', runs, suite_dir, write=True)
    lines = {line.split(' | ')[0][2:]: line for line in text.splitlines()
             if line.startswith('| ') and not line.startswith('| setting')}
    assert lines['base'].startswith('| base | M=3, rank 2, k=3, taps 0-5 | 90.5 ±0.7 ')
    with open(osp.join(suite_dir, 'results.csv')) as f:
        rows = {row['setting']: row for row in csv.DictReader(f)}
    assert rows['rank=1']['Mean n'] == '1' and rows['rank=1']['Mean'] == '80.00'
    assert int(rows['base']['trainable']) == 3168 and int(rows['rank=1']['trainable']) < 3168
    # M = 5 adds back after the last block only: fewer activations than the base
    assert float(rows['M=5']['activations_mb']) < float(rows['base']['activations_mb'])
    # rank 1 saves less and scores less than the base: both on the front; M=5
    # saves less than the base and scores more than rank 1
    front = {name for name, row in rows.items() if row['pareto_front'] == '1'}
    mem = {name: float(row['activations_mb']) for name, row in rows.items()}
    expected = {n for n in keep if not any(
        mem[o] <= mem[n] and float(rows[o]['Mean']) >= float(rows[n]['Mean']) and
        (mem[o] < mem[n] or float(rows[o]['Mean']) > float(rows[n]['Mean']))
        for o in keep if o != n)}
    assert front == expected and 'base' in front
    assert (Path(suite_dir) / 'pareto.png').read_bytes()[:4] == b'\x89PNG'
    # the memory is cached per setting, under the config it was counted on
    cached = json.loads((Path(suite_dir) / 'M5' / 'memory.json').read_text())
    assert cached['mode'] == 'real' and cached['batch_size'] == 32
    assert cached['activations_mb'] == pytest.approx(float(rows['M=5']['activations_mb']),
                                                     abs=1e-3)


def test_jobs_run_cpu_runs_side_by_side(run_suite, capsys):
    args = run_suite.parse_args(['ablation-mini-vtab', '--jobs', '2'])
    launches = plan_launches(args.gpus_per_run, args.launcher, args.partition, args.gpus,
                             args.devices, args.jobs)
    threads = str(max(1, (os.cpu_count() or 1) // 2))
    assert [launch.env() for launch in launches] == [{'OMP_NUM_THREADS': threads}] * 2
    with pytest.raises(SystemExit):
        run_suite.parse_args(['ablation-mini-vtab', '--jobs', '2', '--gpus', '2'])
    assert '--jobs runs CPU runs side by side' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_suite.parse_args(['ablation-mini-vtab', '--shots', '1'])
    assert run_suite.parse_args(['ablation-vtab-vit', '--seeds', '0']).seeds == [0]


def test_vtab_suite_tries_every_kernel_around_the_per_task_kernels(tmp_path):
    configs = suite_configs('ablation-vtab-vit', None)
    settings = suite_settings(configs)
    # the released tasks use kernels 3, 4 and 5: every kernel is a setting
    assert [s.name for s in settings if s.axis == 'kernel'] == ['kernel=0', 'kernel=1',
                                                                'kernel=3', 'kernel=5']
    assert [s.name for s in settings if s.axis == 'M'] == ['M=2', 'M=4', 'M=8', 'M=10']
    runs = plan_runs('ablation-vtab-vit', configs, str(tmp_path), None, [0], False,
                               [], None)
    assert len(runs) == len(settings) * 19
    text = collect_ablation('ablation-vtab-vit', runs, str(tmp_path), write=False)
    assert '| base | M=6, rank 2, k per task, taps 0-11 |' in text
    # the dry run estimates every setting's memory on fake tensors, stores nothing
    rows = {line.split(' | ')[0][2:]: line.split(' | ') for line in text.splitlines()
            if line.startswith('| ') and ' MB' in line}
    activations = {name: float(cells[-3].split()[0]) for name, cells in rows.items()}
    assert activations['M=2'] > activations['M=4'] > activations['base'] > activations['M=8']
    assert not list(tmp_path.rglob('memory.json'))


def test_last_validation_stands_for_the_test_when_the_loaders_are_one(tmp_path):
    run = next(r for r in plan(tmp_path) if r.setting == 'rank=8' and r.seed == 1)
    assert run.test_is_val_at == 10  # the demo validates on its test split at epoch 10
    assert last_validation(run) is None
    log = Path(run.run_dir) / '20260101_000000' / 'vis_data' / 'scalars.json'
    log.parent.mkdir(parents=True)
    log.write_text('\n'.join(json.dumps(e) for e in [
        {'loss': 1.0, 'step': 30}, {'accuracy/top1': 50.0, 'step': 5},
        {'accuracy/top1': 87.5, 'data_time': 0.1, 'time': 0.3, 'step': 10}]) + '\n')
    assert last_validation(run) == {'accuracy/top1': 87.5}
    # the released VTAB-1k recipe validates on its test split every epoch too
    vtab = plan_runs('ablation-vtab-vit', suite_configs(
        'ablation-vtab-vit', ['configs/dtl/vtab/vit-b_dtl+_cifar.py']), str(tmp_path), None,
        [0], False, [], None)
    assert {r.test_is_val_at for r in vtab} == {110}
