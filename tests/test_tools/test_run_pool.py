"""tools/run_suite.py --gpus / --devices: runs at the same time, one per device group.

The scheduling is checked here with device ids that need no GPU (they only
become CUDA_VISIBLE_DEVICES of the runs) and stand-ins for the tools; a real
pair of tiny runs at the same time is test_run_suite.py's end-to-end test.
"""
import json
import os
import os.path as osp
import threading
import time
from pathlib import Path

import pytest

import mmdtl.suites.runner
from mmdtl.suites.definitions import SuiteError
from mmdtl.suites.launch import visible_devices
from mmdtl.suites.run_pool import device_groups, run_on_devices

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def run_suite(load_cli):
    """The command line (main, parse_args) of tools/run_suite.py."""
    return load_cli('tools/run_suite.py')

VTAB = 'configs/dtl/vtab/vit-b_dtl+_{}.py'


def test_device_groups():
    assert device_groups(['0', '1', '2', '3'], 2) == [('0', '1'), ('2', '3')]
    assert device_groups([4, 5], 1) == [('4', ), ('5', )]
    with pytest.raises(ValueError, match=r'3 device\(s\) \(0,1,2\) do not split into groups of 2'):
        device_groups(['0', '1', '2'], 2)
    with pytest.raises(ValueError, match='device.* 1 listed more than once'):
        device_groups(['0', '1', '1', '2'], 1)
    with pytest.raises(ValueError, match='expected a list of device ids'):
        device_groups(['0,1'], 1)
    with pytest.raises(ValueError, match='devices per run must be >= 1'):
        device_groups(['0'], 0)


class DeviceLedger:
    """Who holds which device: records any device taken twice at once."""

    def __init__(self):
        self.lock = threading.Lock()
        self.held = {}
        self.clashes = []
        self.most_at_once = 0

    def take(self, devices, who):
        with self.lock:
            for d in devices:
                if d in self.held:
                    self.clashes.append((d, self.held[d], who))
                self.held[d] = who
            self.most_at_once = max(self.most_at_once, len(set(self.held.values())))

    def give(self, devices):
        with self.lock:
            for d in devices:
                self.held.pop(d, None)


def test_run_on_devices_never_shares_a_device(capsys):
    groups = device_groups(['a', 'b', 'c', 'd'], 2)
    ledger, done = DeviceLedger(), []

    def work(job, group, slot):
        assert group == groups[slot]
        ledger.take(group, job)
        time.sleep(0.03 * (1 + job % 3))
        ledger.give(group)
        done.append((job, group))
        if job == 3:
            return False
        if job == 5:
            raise RuntimeError('boom')
        return True

    results = run_on_devices(list(range(8)), groups, work)
    assert results == [True, True, True, False, True, False, True, True]
    assert ledger.clashes == [] and ledger.most_at_once == 2
    assert sorted(job for job, _ in done) == list(range(8))  # each job once
    assert {group for _, group in done} == set(groups)
    out = capsys.readouterr().out
    assert 'job 6/8 on devices' in out and 'RuntimeError: boom' in out
    with pytest.raises(ValueError):
        run_on_devices([1], [], work)


def fake_tools(ledger, calls, fail_train_of):
    """Stands in for tools/train.py and tools/test.py: the files they leave."""

    def execute(cmd, log_file, verbose, extra_env=None, prefix=''):
        run_dir = osp.dirname(log_file)
        devices = tuple((extra_env or {}).get('CUDA_VISIBLE_DEVICES', '-').split(','))
        ledger.take(devices, run_dir)
        time.sleep(0.05)
        ledger.give(devices)
        tool = 'train' if log_file.endswith('train.log') else 'test'
        calls.append((osp.basename(run_dir), tool, dict(extra_env or {}), cmd))
        os.makedirs(run_dir, exist_ok=True)
        if tool == 'train':
            if fail_train_of in run_dir:
                return 1
            open(osp.join(run_dir, 'epoch_1.pth'), 'w').close()
            with open(osp.join(run_dir, 'last_checkpoint'), 'w') as f:
                f.write(osp.join(run_dir, 'epoch_1.pth'))
        else:
            stamp = time.strftime('%Y%m%d_%H%M%S')
            os.makedirs(osp.join(run_dir, stamp), exist_ok=True)
            with open(osp.join(run_dir, stamp, f'{stamp}.json'), 'w') as f:
                json.dump({'accuracy/top1': 50.0 + len(calls), 'time': 1.0}, f)
        return 0

    return execute


def test_suite_on_a_device_pool(run_suite, tmp_path, monkeypatch, capsys):
    tasks = ['cifar', 'caltech101', 'dtd', 'oxford_flowers102', 'svhn']
    wd = tmp_path / 'wd'
    finished = wd / 'vtab-vit-dtl+' / 'vit-b_dtl+_caltech101'
    finished.mkdir(parents=True)
    (finished / 'results.json').write_text(json.dumps(dict(metrics={'accuracy/top1': 90.0})))
    ledger, calls = DeviceLedger(), []
    monkeypatch.setattr(mmdtl.suites.runner, 'execute',
                        fake_tools(ledger, calls, fail_train_of='dtd'))
    argv = ['vtab-vit-dtl+', '--work-dir', str(wd), '--devices', '3', '5',
            '--configs', *[VTAB.format(t) for t in tasks]]
    assert run_suite.main(argv) == 1  # one run failed
    out = capsys.readouterr().out
    assert 'Up to 2 runs at the same time on devices 3 | 5 (1 per run' in out
    assert '[2/5] vit-b_dtl+_caltech101: done, skipped' in out
    assert '[3/5] vit-b_dtl+_dtd: training FAILED' in out
    assert '1 run(s) failed: vit-b_dtl+_dtd' in out

    # the finished run was not touched; every other run trained (and all but dtd tested)
    ran = [(stem, tool) for stem, tool, _, _ in calls]
    assert sorted(ran) == sorted([(f'vit-b_dtl+_{t}', 'train') for t in tasks if t != 'caltech101']
                                 + [(f'vit-b_dtl+_{t}', 'test')
                                    for t in ('cifar', 'oxford_flowers102', 'svhn')])
    # one device per run, never one device for two runs at a time, both devices used
    assert ledger.clashes == [] and ledger.most_at_once == 2
    assert {env['CUDA_VISIBLE_DEVICES'] for _, _, env, _ in calls} == {'3', '5'}
    for stem, tool, env, cmd in calls:
        assert cmd[1].endswith(f'tools/{tool}.py') and 'PORT' not in env
    trained_on = {stem: env['CUDA_VISIBLE_DEVICES'] for stem, tool, env, _ in calls
                  if tool == 'train'}
    for stem, tool, env, _ in calls:  # tested on the devices it trained on
        assert tool == 'train' or env['CUDA_VISIBLE_DEVICES'] == trained_on[stem]
    table = (wd / 'vtab-vit-dtl+' / 'results.md').read_text()
    assert '| vit-b_dtl+ | ' in table and '90.0' in table

    # Again: the three finished runs are skipped, only dtd trains again (and fails).
    calls.clear()
    assert run_suite.main(argv) == 1
    assert capsys.readouterr().out.count('done, skipped') == 4
    assert [(stem, tool) for stem, tool, _, _ in calls] == [('vit-b_dtl+_dtd', 'train')]


def test_dry_run_commands_ddp_and_slurm(run_suite, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv('PORT', raising=False)
    monkeypatch.delenv('GPUS_PER_NODE', raising=False)
    wd = tmp_path / 'wd'
    config = 'configs/dtl/few_shot/vit-b_dtl+_food101.py'
    argv = ['few-shot', '--work-dir', str(wd), '--dry-run', '--configs', config,
            '--shots', '16', '--seeds', '0', '1']
    # 4 devices, 2 per run: two DDP runs at once, on their own devices and ports
    assert run_suite.main(argv + ['--devices', '0', '1', '2', '3', '--gpus-per-run', '2']) == 0
    out = capsys.readouterr().out
    stem = f'{wd}/few-shot/vit-b_dtl+_food101'
    assert (f'CUDA_VISIBLE_DEVICES=0,1 PORT=29500 bash {REPO}/tools/dist_train.sh '
            f'{REPO}/{config} 2 --work-dir {stem} --cfg-options') in out
    assert f'CUDA_VISIBLE_DEVICES=2,3 PORT=29501 bash {REPO}/tools/dist_test.sh' in out
    # without --gpus / --devices: one run at a time, the environment unchanged
    assert run_suite.main(argv + ['--gpus-per-run', '2']) == 0
    out = capsys.readouterr().out
    assert f'  bash {REPO}/tools/dist_train.sh {REPO}/{config} 2 --work-dir' in out
    assert 'CUDA_VISIBLE_DEVICES' not in out and 'PORT=' not in out
    # Slurm: every tool one srun job step of GPUS tasks, 8 GPUs = 2 steps at a time
    assert run_suite.main(argv + ['--launcher', 'slurm', '--partition', 'p', '--gpus', '8',
                                  '--gpus-per-run', '4']) == 0
    out = capsys.readouterr().out
    assert 'Up to 2 runs at the same time on Slurm job steps' in out
    assert (f'GPUS=4 GPUS_PER_NODE=4 bash {REPO}/tools/slurm_train.sh p '
            f'vit-b_dtl+_food101_shot16_seed1 {REPO}/{config} {stem} --cfg-options') in out
    assert (f'GPUS=4 GPUS_PER_NODE=4 bash {REPO}/tools/slurm_test.sh p '
            f'vit-b_dtl+_food101_shot16_seed0 {REPO}/{config} <checkpoint> --work-dir {stem} '
            '--cfg-options') in out
    assert not wd.exists()

    for bad, message in [(['--gpus', '2', '--devices', '0', '1'], 'not both'),
                         (['--launcher', 'slurm'], '--launcher slurm needs --partition'),
                         (['--partition', 'p'], '--partition is for --launcher slurm'),
                         (['--gpus-per-run', '0'], '--gpus-per-run must be >= 1')]:
        with pytest.raises(SystemExit):
            run_suite.parse_args(['few-shot', *bad])
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit, match=r'do not split into groups of 2'):
        run_suite.main(argv + ['--devices', '0', '1', '2', '--gpus-per-run', '2'])
    # --gpus counts the visible devices
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '4,6')
    assert visible_devices(2, check=True) == ['4', '6']
    with pytest.raises(SuiteError, match=r'--gpus 3: only 2 CUDA device\(s\) visible here'):
        visible_devices(3, check=True)
