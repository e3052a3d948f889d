"""tools/train.py and tools/test.py end to end on the demo config (CPU, tiny)."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
CONFIG = 'configs/dtl/vit-demo_digits.py'


def tool_env():
    env = dict(os.environ, OMP_NUM_THREADS='1')
    env['PYTHONPATH'] = os.pathsep.join([str(REPO), env.get('PYTHONPATH', '')])
    return env


def run_tool(*args, check=True):
    """Run a tool from the repository root; return its combined output."""
    proc = subprocess.run([sys.executable, *map(str, args)],
                          cwd=REPO,
                          env=tool_env(),
                          stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT,
                          text=True,
                          timeout=300)
    if check:
        assert proc.returncode == 0, proc.stdout[-5000:]
    return proc


def data_options(data_root, batch_size=4):
    """--cfg-options pointing the demo at a generated tree, small and single-process."""
    opts = []
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        opts += [
            f'{loader}.dataset.data_root={data_root}', f'{loader}.batch_size={batch_size}',
            f'{loader}.num_workers=0', f'{loader}.persistent_workers=False'
        ]
    return opts


@pytest.fixture(scope='module')
def digits_root(tmp_path_factory):
    from mmdtl.testing import make_vtab_tree
    root = tmp_path_factory.mktemp('data')
    # train800val200 = 8 + 4 images -> 3 iterations of 4 per epoch
    make_vtab_tree(str(root), task='digits', num_classes=10,
                   sizes=dict(train800=8, val200=4, test=6), image_size=32)
    return root


@pytest.fixture(scope='module')
def frozen_init(tmp_path_factory):
    """The demo backbone built and initialised here, saved as the 'pre-trained'
    weights the run starts from: the frozen part must come back bit-identical."""
    from mmengine.config import Config
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS

    import mmdtl  # noqa: F401

    torch.manual_seed(1)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        backbone = MODELS.build(Config.fromfile(REPO / CONFIG).model.backbone)
    backbone.init_weights()
    path = tmp_path_factory.mktemp('init') / 'backbone_init.pth'
    torch.save(backbone.state_dict(), path)
    return path


def test_train_resume_and_test(tmp_path, digits_root, frozen_init):
    work_dir = tmp_path / 'work'
    options = data_options(digits_root) + [
        # init_cfg is None in the demo: replace it rather than merge into it
        'model.backbone.init_cfg._delete_=True', 'model.backbone.init_cfg.type=Pretrained',
        f'model.backbone.init_cfg.checkpoint={frozen_init}',
        'train_cfg.max_epochs=2', 'train_cfg.val_interval=100',
        'default_hooks.checkpoint.type=AtomicCheckpointHook',
        'default_hooks.checkpoint.interval=1', 'default_hooks.checkpoint.max_keep_ckpts=-1',
        'default_hooks.logger.interval=1', 'randomness.seed=0',
        # The CPU option: packs made from the weights the Runner loads after build.
        'model.backbone.pack_frozen_weights=True'
    ]
    out = run_tool('tools/train.py', CONFIG, '--work-dir', work_dir, '--amp',
                   '--cfg-options', *options).stdout
    if not torch.cuda.is_available():
        assert 'falling back to OptimWrapper' in out
    assert (work_dir / 'epoch_2.pth').is_file()

    # Resume (no path: the latest checkpoint of work_dir) to a longer schedule.
    out = run_tool('tools/train.py', CONFIG, '--work-dir', work_dir, '--resume',
                   '--cfg-options', *options, 'train_cfg.max_epochs=3').stdout
    assert 'resumed epoch: 2, iter: 6' in out, out[-3000:]
    assert re.search(r'Epoch\(train\)\s+\[3\]\[3/3\]', out), out[-3000:]

    assert not list(work_dir.glob('.*.tmp'))  # atomic saves left no temporaries
    first = torch.load(work_dir / 'epoch_1.pth', map_location='cpu', weights_only=True)
    final = torch.load(work_dir / 'epoch_3.pth', map_location='cpu', weights_only=True)
    assert (final['meta']['epoch'], final['meta']['iter']) == (3, 9)
    state = final['state_dict']

    # The side network and the head trained ...
    csn_keys = [k for k in state if k.startswith('backbone.csn.')]
    assert csn_keys
    assert any(not torch.equal(state[k], first['state_dict'][k]) for k in csn_keys)
    assert not torch.equal(state['head.fc.weight'], first['state_dict']['head.fc.weight'])
    # ... while every frozen backbone tensor is exactly the initial one.
    init = torch.load(frozen_init, map_location='cpu', weights_only=True)
    frozen = [k for k in init if not k.startswith('csn.')]
    assert len(frozen) > 50
    for key in frozen:
        assert torch.equal(state[f'backbone.{key}'], init[key]), key

    out = run_tool('tools/test.py', CONFIG, work_dir / 'epoch_3.pth', '--work-dir', work_dir,
                   '--cfg-options', *data_options(digits_root)).stdout
    match = re.search(r'accuracy/top1: ([\d.]+)', out.split('Test metrics of')[-1])
    assert match, out[-3000:]
    assert 0 <= float(match.group(1)) <= 100


def run_main(tool, argv, monkeypatch):
    """Run a tool's main() expecting it to stop; return the exit message."""
    monkeypatch.setattr(sys, 'argv', [tool.__file__, *map(str, argv)])
    with pytest.raises(SystemExit) as info:
        tool.main()
    assert info.value.code != 0
    return info.value.code


def test_clear_errors(tmp_path, monkeypatch, capsys, load_cli):
    train, test = load_cli('tools/train.py'), load_cli('tools/test.py')
    msg = run_main(train, ['configs/dtl/no-such-config.py'], monkeypatch)
    assert msg == 'Config file not found: configs/dtl/no-such-config.py'

    run_main(train, [CONFIG, '--cfg-options', 'train_cfg.max_epochs'], monkeypatch)
    assert "expected KEY=VALUE, got 'train_cfg.max_epochs'" in capsys.readouterr().err

    msg = run_main(train, [CONFIG, '--cfg-options', 'train_cfg.max_epochs=1',
                           'model.backbone.arch.embed_dims.x=1'], monkeypatch)
    assert msg.startswith(f"Invalid --cfg-options model.backbone.arch.embed_dims.x=1 for "
                          f"config {CONFIG}")

    msg = run_main(test, [CONFIG, tmp_path / 'missing.pth'], monkeypatch)
    assert msg == f'Checkpoint not found: {tmp_path / "missing.pth"}'


def test_backbone_that_does_not_reach_the_neck_stops_train_before_the_runner(monkeypatch,
                                                                               load_cli):
    """A dense config whose backbone gives fewer maps than the neck reads
    stops with the keys to change, not mmdet's bare AssertionError."""
    train = load_cli('tools/train.py')
    config = 'configs/dense-demo/retinanet_vit-demo_dtl+_scenes.py'
    msg = run_main(train, [config, '--cfg-options', 'model.backbone.out_type=cls_token'],
                   monkeypatch)
    assert config in msg.split(':')[0] and 'model.backbone.out_type="featmap"' in msg
    # As shipped, the grey-image trunk reaches its pyramid (1-channel test image).
    from mmengine.config import Config

    from mmdtl.utils.config_checks import check_backbone_reaches_neck
    check_backbone_reaches_neck(Config.fromfile(config))


def test_amp_falls_back_without_gpu():
    from mmengine.config import Config

    from mmdtl.engine.launch import setup_amp
    cfg = Config(dict(optim_wrapper=dict(type='AmpOptimWrapper', loss_scale='dynamic',
                                         optimizer=dict(type='SGD', lr=0.1))))
    notes = []
    setup_amp(cfg, amp=False, notes=notes, gpu=False)
    assert cfg.optim_wrapper.type == 'OptimWrapper' and 'loss_scale' not in cfg.optim_wrapper
    assert 'falling back to OptimWrapper' in notes[0]

    cfg = Config(dict(optim_wrapper=dict(type='OptimWrapper', optimizer=dict(type='SGD'))))
    setup_amp(cfg, amp=True, notes=[], gpu=True)
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
