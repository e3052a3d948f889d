"""tools/dist_train.sh: two processes with torchrun, gloo on a CPU machine."""
import os
import socket
import subprocess
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
CONFIG = 'configs/dtl/vit-demo_digits.py'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def test_dist_train_two_processes(tmp_path):
    from mmdtl.testing import make_vtab_tree
    make_vtab_tree(str(tmp_path / 'data'), task='digits', num_classes=10,
                   sizes=dict(train800=8, val200=4, test=4), image_size=32)
    work_dir = tmp_path / 'work'
    options = ['train_cfg.max_epochs=1', 'train_cfg.val_interval=1',
               'default_hooks.checkpoint.interval=1', 'default_hooks.logger.interval=1']
    for loader in ('train_dataloader', 'val_dataloader'):
        options += [f'{loader}.dataset.data_root={tmp_path / "data"}', f'{loader}.batch_size=2',
                    f'{loader}.num_workers=0', f'{loader}.persistent_workers=False']
    env = dict(os.environ, OMP_NUM_THREADS='1', PORT=str(free_port()))
    proc = subprocess.run(
        ['bash', 'tools/dist_train.sh', CONFIG, '2', '--work-dir', str(work_dir),
         '--cfg-options', *options],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=300)
    out = proc.stdout
    assert proc.returncode == 0, out[-5000:]
    assert (work_dir / 'epoch_1.pth').is_file()
    assert 'Distributed launcher: pytorch' in out
    assert 'GPU number: 2' in out, out[-3000:]  # mmengine's name for the world size
    if not torch.cuda.is_available():
        assert "replaced by 'gloo'" in out
    # 12 images over 2 ranks, 2 per batch: 3 iterations per epoch
    ckpt = torch.load(work_dir / 'epoch_1.pth', map_location='cpu', weights_only=True)
    assert ckpt['meta']['iter'] == 3
    assert 'accuracy/top1' in out  # distributed validation gathered the results
