"""The demo backbone: the pre-training tool for a few iterations, and the shipped checkpoint."""
import hashlib
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch

from mmdtl.testing import make_fashion_mnist_files

CHECKPOINT = 'checkpoints/demo/vit-demo_fashion-mnist.pth'
DEMO_BASE = 'configs/demo/_base_/mini-vtab_vit-demo.py'


def sha256(path) -> str:
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def build_backbone(repo_root, checkpoint, dtl: bool = False):
    """The demo's backbone as the demo configs build it, from ``checkpoint``."""
    from mmengine.config import Config
    from mmpretrain.registry import MODELS

    import mmdtl  # noqa: F401

    cfg = Config.fromfile(str(repo_root / (
        'configs/demo/_base_/dtl+.py' if dtl else DEMO_BASE)))
    cfg.model.backbone.init_cfg.checkpoint = str(checkpoint)
    backbone = MODELS.build(cfg.model.backbone)
    backbone.init_weights()
    return backbone


def test_pretrain_tool_few_iterations(tmp_path, repo_root):
    src = make_fashion_mnist_files(tmp_path / 'src', num_test=40, num_train=48)
    data = tmp_path / 'fashion-mnist'
    out = tmp_path / 'ckpt' / 'backbone.pth'
    options = [f'{loader}.dataset.data_root={data}'
               for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')]
    options += ['train_cfg.max_epochs=1', 'train_dataloader.batch_size=16']
    proc = subprocess.run(
        [sys.executable, 'tools/misc/pretrain_demo_backbone.py', '--out', str(out),
         '--work-dir', str(tmp_path / 'work'), '--fashion-mnist', src,
         '--cfg-options', *options],
        cwd=repo_root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # the uncompressed files mmpretrain's FashionMNIST reads
    assert sorted(p.name for p in data.iterdir()) == sorted(
        ['t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte', 'train-images-idx3-ubyte',
         'train-labels-idx1-ubyte'])
    ckpt = torch.load(out, map_location='cpu', weights_only=True)  # plain data only
    assert ckpt['meta']['epochs'] == 1 and ckpt['meta']['iters'] == 3  # 48 images / 16
    assert 0 <= ckpt['meta']['fashion_mnist_test_top1'] <= 100
    state = ckpt['state_dict']
    assert {k.split('.')[0] for k in state} == {'backbone', 'head'}
    assert state['backbone.patch_embed.projection.weight'].shape == (96, 1, 7, 7)
    assert f'{sha256(out)}  backbone.pth' in (out.parent / 'SHA256SUMS').read_text()

    # the demo configs load it: every trunk weight, for mmpretrain's ViT and DTLViT
    for dtl in (False, True):
        backbone = build_backbone(repo_root, out, dtl)
        for key, value in backbone.state_dict().items():
            if not key.startswith('csn.'):
                torch.testing.assert_close(value, state[f'backbone.{key}'], rtol=0, atol=0)


def test_pretrain_tool_names_missing_data(load_cli, tmp_path):
    tool = load_cli('tools/misc/pretrain_demo_backbone.py')
    data = tmp_path / 'data'
    with pytest.raises(SystemExit, match='apt-get install dataset-fashion-mnist'):
        tool.main(['--out', str(tmp_path / 'x.pth'), '--fashion-mnist',
                   str(tmp_path / 'nowhere'), '--cfg-options',
                   f'train_dataloader.dataset.data_root={data}',
                   f'val_dataloader.dataset.data_root={data}'])
    assert not (tmp_path / 'x.pth').exists()


def test_shipped_checkpoint(repo_root):
    path = repo_root / CHECKPOINT
    digest = sha256(path)
    # the hash is recorded next to it, in sha256sum -c format and in its README
    sums = (path.parent / 'SHA256SUMS').read_text()
    assert f'{digest}  {path.name}' in sums.splitlines()
    readme = (path.parent / 'README.md').read_text()
    assert digest in readme
    assert 'python tools/misc/pretrain_demo_backbone.py' in readme
    assert osp.getsize(path) < 5 * 2**20
    ckpt = torch.load(path, map_location='cpu', weights_only=True)
    assert ckpt['meta']['config'] == 'configs/pretrain/vit-demo_fashion-mnist.py'
    # its accuracy on the Fashion-MNIST test split is quoted as recorded
    top1 = ckpt['meta']['fashion_mnist_test_top1']
    assert re.search(rf'\b{top1:.1f} ?%', readme), f'{top1:.1f} % not in the README'
    backbone = build_backbone(repo_root, path)
    for key, value in backbone.state_dict().items():
        torch.testing.assert_close(value, ckpt['state_dict'][f'backbone.{key}'], rtol=0, atol=0)
