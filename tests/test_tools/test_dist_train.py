"""The global batch of a config is kept on any number of processes.

tools/dist_train.sh with two processes (torchrun, gloo on a CPU machine)
against tools/train.py with one; the batch arithmetic and its errors; the
arguments tools/slurm_train.sh gives srun.
"""
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def tiny_config(tmp_path, global_batch_size=4) -> Path:
    """The demo, 1 epoch on 16 images, with a per-iteration warm-up: the lr of
    every step depends on the number of steps per epoch."""
    from mmdtl.testing import make_vtab_tree
    data = tmp_path / 'data'
    make_vtab_tree(str(data), task='digits', num_classes=10,
                   sizes=dict(train800=8, val200=8, test=4), image_size=32)
    loader = dict(num_workers=0, persistent_workers=False, dataset=dict(data_root=str(data)))
    path = tmp_path / 'tiny.py'
    path.write_text(f'''_base_ = {str(REPO / 'configs/dtl/vit-demo_digits.py')!r}
global_batch_size = {global_batch_size}
train_dataloader = {dict(loader, batch_size=global_batch_size)!r}
val_dataloader = {dict(loader, batch_size=4)!r}
test_dataloader = val_dataloader
optim_wrapper = dict(type='OptimWrapper', optimizer=dict(lr=0.01))
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=True, begin=0, end=1,
                        convert_to_iter_based=True)]
train_cfg = dict(max_epochs=1, val_interval=1)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=1))
randomness = dict(seed=0)
''')
    return path


def train(cmd, work_dir):
    # CPU processes (gloo) on any machine: two ranks cannot share one GPU
    env = dict(os.environ, OMP_NUM_THREADS='1', PORT=str(free_port()), CUDA_VISIBLE_DEVICES='')
    env['PYTHONPATH'] = os.pathsep.join([str(REPO), env.get('PYTHONPATH', '')])
    proc = subprocess.run([*cmd, '--work-dir', str(work_dir)], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-5000:]
    ckpt = torch.load(work_dir / 'epoch_1.pth', map_location='cpu', weights_only=True)
    (scalars, ) = work_dir.glob('*/vis_data/scalars.json')
    lrs = [json.loads(line)['lr'] for line in scalars.read_text().splitlines()
           if '"lr"' in line]
    return proc.stdout, ckpt['meta']['iter'], lrs


def test_two_processes_keep_the_global_batch(tmp_path):
    config = tiny_config(tmp_path)
    out1, iters1, lrs1 = train([sys.executable, 'tools/train.py', str(config)], tmp_path / 'w1')
    out2, iters2, lrs2 = train(['bash', 'tools/dist_train.sh', str(config), '2'], tmp_path / 'w2')

    # 16 images, global batch 4: 4 optimizer steps per epoch on 1 or 2 processes
    # (2 per process on 2); keeping 4 per process would make it 2 steps.
    assert iters1 == iters2 == 4
    # ... so every step runs at the same lr (the warm-up is per iteration).
    assert len(lrs1) == 4 and lrs1[0] < lrs1[-1]
    assert lrs2 == pytest.approx(lrs1, rel=1e-9)
    assert 'Batch: global 4 = 1 process(es) x 4 per process (global_batch_size of the config ' \
        'kept); lr 0.01' in out1
    assert 'Batch: global 4 = 2 process(es) x 2 per process (global_batch_size of the config ' \
        'kept); lr 0.01' in out2
    assert out2.count('Batch: global') == 1  # rank 0 only
    assert 'GPU number: 2' in out2  # mmengine's name for the world size
    assert "replaced by 'gloo'" in out2
    assert 'accuracy/top1' in out2  # distributed validation gathered the results


def test_global_batch_that_does_not_divide_is_an_error(tmp_path, monkeypatch, load_cli):
    train_tool = load_cli('tools/train.py')
    config = tiny_config(tmp_path, global_batch_size=4)
    # As torchrun starts 3 processes: the error comes before any process group.
    monkeypatch.setenv('WORLD_SIZE', '3')
    monkeypatch.setenv('RANK', '0')
    monkeypatch.setattr(sys, 'argv', ['train.py', str(config), '--launcher', 'pytorch'])
    with pytest.raises(SystemExit) as info:
        train_tool.main()
    assert str(info.value).startswith(
        f'{config}: the global batch of the recipe (global_batch_size=4) does not divide into '
        '3 processes.')
    assert '--auto-scale-lr' in str(info.value)
    assert not (torch.distributed.is_available() and torch.distributed.is_initialized())


def test_batch_modes(monkeypatch):
    from mmdtl.engine.launch import LaunchError, launcher_world_size, setup_batch

    def setup(options=(), auto_scale_lr=False, world_size=4, global_batch_size=32):
        cfg = Config(dict(train_dataloader=dict(batch_size=32), auto_scale_lr=dict(
            base_batch_size=32)))
        if global_batch_size is not None:
            cfg.global_batch_size = global_batch_size
        options = dict(options)
        cfg.merge_from_dict(options)
        notes = []
        line = setup_batch(cfg, 'c.py', options, auto_scale_lr, world_size, notes)
        setup.cfg = cfg
        return cfg.train_dataloader.batch_size, line, notes

    # the recipe's global batch is kept
    bs, line, notes = setup()
    assert bs == 8 and notes == []
    assert line == ('Batch: global 32 = 4 process(es) x 8 per process '
                    '(global_batch_size of the config kept)')
    assert setup(world_size=1)[0] == 32
    assert setup({'global_batch_size': 64})[0] == 16  # another recipe, still global
    # --auto-scale-lr keeps the per-process batch (mmengine scales the lr)
    bs, line, notes = setup(auto_scale_lr=True)
    assert bs == 32 and line.startswith('Batch: global 128 = 4 process(es) x 32 per process')
    assert 'global batch is 128, not the recipe\'s global_batch_size=32 of c.py' in notes[0]
    # ... from the batch its lr is set for: the recipe's global batch
    assert setup({'global_batch_size': 64}, auto_scale_lr=True)[0] == 32
    assert setup.cfg.auto_scale_lr.base_batch_size == 64
    # train_dataloader.batch_size on the command line is per process (OpenMMLab)
    bs, line, notes = setup({'train_dataloader.batch_size': 4})
    assert bs == 4 and 'global 16' in line and len(notes) == 1
    assert setup({'train_dataloader.batch_size': 8, 'global_batch_size': 32})[0] == 8
    with pytest.raises(LaunchError, match=r'c.py: --cfg-options train_dataloader.batch_size=4 '
                       r'and global_batch_size=32 disagree on 4 process\(es\)'):
        setup({'train_dataloader.batch_size': 4, 'global_batch_size': 32})
    # without global_batch_size: OpenMMLab's per-process batch
    bs, line, notes = setup(global_batch_size=None)
    assert bs == 32 and 'global 128' in line and notes == []
    with pytest.raises(LaunchError, match='global_batch_size must be a positive integer'):
        setup(global_batch_size=0)

    # the launchers' process counts, read before the process group exists
    monkeypatch.setenv('SLURM_NTASKS', '6')
    assert launcher_world_size('slurm') == 6
    assert launcher_world_size('none') == 1
    monkeypatch.delenv('WORLD_SIZE', raising=False)
    with pytest.raises(LaunchError, match='--launcher pytorch: WORLD_SIZE is not set'):
        launcher_world_size('pytorch')


def test_recipe_configs_state_their_global_batch():
    for path in ('configs/dtl/vit-b_vtab-cifar.py', 'configs/dtl/swin-b_vtab-cifar.py',
                 'configs/dtl/few_shot/vit-b_dtl+_food101.py',
                 'configs/dtl/domain_generalization/vit-b_dtl+_imagenet.py'):
        cfg = Config.fromfile(REPO / path)
        # the release's batch 32, as one process runs it
        assert cfg.global_batch_size == cfg.train_dataloader.batch_size == 32, path
        assert cfg.auto_scale_lr.base_batch_size == 32, path


@pytest.mark.parametrize('tool', ['train', 'test'])
def test_slurm_scripts_give_srun_one_step(tmp_path, tool):
    """A stand-in srun on PATH prints what it was given (there is no Slurm here)."""
    fake = tmp_path / 'bin' / 'srun'
    fake.parent.mkdir()
    fake.write_text('#!/usr/bin/env bash\nfor a in "$@"; do echo "<$a>"; done\n')
    fake.chmod(0o755)
    env = dict(os.environ, PATH=f'{fake.parent}{os.pathsep}{os.environ["PATH"]}', GPUS='2')
    env.pop('GPUS_PER_NODE', None)
    proc = subprocess.run(
        ['bash', f'tools/slurm_{tool}.sh', 'part', 'job', 'c.py', 'W',
         '--cfg-options', 'model.x=(1, 2)'],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    args = re.findall(r'<(.*)>', proc.stdout)
    # 2 GPUs: 2 tasks on one node holding 2 GPUs (not 8), arguments kept whole
    assert args[:7] == ['-p', 'part', '--job-name=job', '--gres=gpu:2', '--ntasks=2',
                        '--ntasks-per-node=2', '--cpus-per-task=5']
    assert args[-2:] == ['--cfg-options', 'model.x=(1, 2)']
    assert args[args.index(str(REPO / 'tools' / f'{tool}.py')) + 1] == 'c.py'
    assert '--launcher=slurm' in args
    assert ('--work-dir=W' if tool == 'train' else 'W') in args
