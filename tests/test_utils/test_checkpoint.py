"""Safe (weights-only) checkpoint loading and atomic checkpoint saving."""
import collections
import glob
import os
import os.path as osp
import pickle
import uuid

import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.fileio import LocalBackend
from mmengine.logging import HistoryBuffer, MessageHub, MMLogger
from mmengine.model import BaseModel
from mmengine.registry import DefaultScope
from mmengine.runner import Runner
from mmengine.runner.checkpoint import CheckpointLoader, _load_checkpoint
from mmengine.visualization import Visualizer

from mmdtl.utils import (
    UnsafeCheckpointError,
    load_from_local_safe,
    register_safe_globals,
    save_checkpoint_atomic,
)


class ToyModel(BaseModel):

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        out = self.linear(inputs)
        if mode == 'loss':
            return dict(loss=out.pow(2).mean())
        return out


class ToyDataset(torch.utils.data.Dataset):
    metainfo = dict(classes=('a', 'b'))

    def __len__(self):
        return 4

    def __getitem__(self, idx):
        return dict(inputs=torch.full((2, ), float(idx)))


@pytest.fixture(autouse=True)
def restore_global_state():
    """A Runner makes itself the current default scope ('mmengine'), logger,
    message hub and visualizer; restore them so later tests are unaffected."""
    managers = (DefaultScope, MessageHub, MMLogger, Visualizer)
    saved = [manager._instance_dict.copy() for manager in managers]
    yield
    for manager, instances in zip(managers, saved):
        manager._instance_dict = instances


def make_runner(work_dir, max_epochs, **hook_kwargs):
    """A tiny mmengine Runner whose checkpoints have the real layout."""
    return Runner(
        model=ToyModel(),
        work_dir=str(work_dir),
        experiment_name=f'ckpt_{uuid.uuid4().hex[:8]}',
        train_dataloader=dict(
            dataset=ToyDataset(),
            sampler=dict(type='DefaultSampler', shuffle=True),
            batch_size=2,
            collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=0.1)),
        param_scheduler=dict(type='CosineAnnealingLR', by_epoch=True, T_max=4),
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs),
        default_hooks=dict(
            logger=dict(type='LoggerHook', interval=1),
            checkpoint=dict(type='AtomicCheckpointHook', interval=1, **hook_kwargs)),
        randomness=dict(seed=0),
        resume=True,  # resume from work_dir's last_checkpoint when there is one
    )


def test_register_safe_globals_is_idempotent_and_installs_loader():
    register_safe_globals()
    register_safe_globals()
    assert CheckpointLoader._get_checkpoint_loader('/some/file.pth') is load_from_local_safe
    for prefix in ('http://', 'open-mmlab://'):
        assert getattr(CheckpointLoader._get_checkpoint_loader(prefix + 'x.pth'), '_mmdtl_safe')


def test_real_checkpoint_loads_and_resumes(tmp_path):
    make_runner(tmp_path, max_epochs=1).train()
    ckpt = tmp_path / 'epoch_1.pth'

    # torch's own weights-only load and mmengine's loader both accept it.
    ckpt_dict = torch.load(ckpt, map_location='cpu', weights_only=True)
    assert isinstance(ckpt_dict['message_hub']['log_scalars']['train/loss'], HistoryBuffer)
    assert _load_checkpoint(str(ckpt), map_location='cpu')['meta']['epoch'] == 1

    # The Runner resumes from it (this failed with mmengine 0.10.7 + torch>=2.6).
    runner = make_runner(tmp_path, max_epochs=2)
    runner.train()
    assert runner.epoch == 2 and runner.iter == 4
    hub = _load_checkpoint(str(tmp_path / 'epoch_2.pth'))['message_hub']
    # the restored loss history continued instead of starting over
    assert len(hub['log_scalars']['train/loss']._log_history) == 4


class _RunsCommand:

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, (f'touch {self.path}', )


class _Custom:
    pass


class _GetattrEscape:

    def __reduce__(self):
        # would hand the attacker an arbitrary attribute of an allowed object
        return getattr, (collections.OrderedDict, '__init_subclass__')


@pytest.mark.parametrize('zip_format', [True, False], ids=['zip', 'legacy'])
@pytest.mark.parametrize('payload, offending', [
    ('command', 'system'),
    (_Custom(), f'{__name__}._Custom'),
    (_GetattrEscape(), 'builtins.getattr'),
])
def test_foreign_globals_are_refused(tmp_path, payload, offending, zip_format):
    marker = tmp_path / 'pwned'
    if payload == 'command':
        payload = _RunsCommand(marker)
    ckpt = tmp_path / 'evil.pth'
    # The legacy (non-zip) format too: torch's message may not name the global.
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'extra': payload}, ckpt,
               _use_new_zipfile_serialization=zip_format)

    with pytest.raises(UnsafeCheckpointError) as info:
        _load_checkpoint(str(ckpt), map_location='cpu')
    msg = str(info.value)
    assert str(ckpt) in msg and offending in msg and 'allow-list' in msg
    assert 'weights_only=False' not in msg
    assert isinstance(info.value, pickle.UnpicklingError)
    assert not marker.exists()


def _unreadable_files(folder):
    """Checkpoints cut short, empty or of another format."""
    good, legacy = folder / 'good.pth', folder / 'legacy.pth'
    torch.save({'state_dict': {'w': torch.zeros(256)}}, good)
    torch.save({'state_dict': {'w': torch.zeros(256)}}, legacy,
               _use_new_zipfile_serialization=False)
    files = {'empty': b'', 'truncated': good.read_bytes()[:300],
             'truncated_legacy': legacy.read_bytes()[:-100],
             'cut_in_header': legacy.read_bytes()[:20], 'text': b'not a checkpoint\n' * 8}
    paths = {}
    for name, data in files.items():
        paths[name] = folder / f'{name}.pth'
        paths[name].write_bytes(data)
    paths['npz'] = folder / 'ViT-B_16.npz'
    np.savez(paths['npz'], **{'Transformer/encoder_norm/scale': np.ones(4)})
    return paths


def test_unreadable_checkpoints_are_one_line_naming_the_file(tmp_path):
    from mmdtl.utils import UnreadableCheckpointError
    for name, path in _unreadable_files(tmp_path).items():
        with pytest.raises(UnreadableCheckpointError) as info:
            _load_checkpoint(str(path), map_location='cpu')  # mmengine's loader
        msg = str(info.value)
        assert msg.startswith(f'Cannot read checkpoint {path}: '), (name, msg)
        assert '\n' not in msg and 'Traceback' not in msg, (name, msg)
        if name == 'empty':
            assert 'the file is empty (0 bytes)' in msg
        elif name == 'npz':
            assert 'tools/model_converters/vit_npz_to_mmpretrain.py' in msg
        else:
            assert 'truncated or not a torch checkpoint' in msg, (name, msg)


def test_save_checkpoint_atomic_keeps_previous_file(tmp_path, monkeypatch):
    path = tmp_path / 'ckpt.pth'
    save_checkpoint_atomic({'w': torch.ones(3)}, str(path))
    before = path.read_bytes()

    # 1) serialisation fails midway (an unpicklable object after tensors)
    with pytest.raises(Exception):
        save_checkpoint_atomic({'w': torch.zeros(3), 'bad': lambda: None}, str(path))
    # 2) the process "dies" after part of the file was written
    real_save = torch.save

    def partial_save(obj, f, *args, **kwargs):
        f.write(b'PK\x03\x04 half a zip')
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, 'save', partial_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint_atomic({'w': torch.zeros(3)}, str(path))
    monkeypatch.setattr(torch, 'save', real_save)

    assert path.read_bytes() == before
    assert torch.equal(torch.load(path, weights_only=True)['w'], torch.ones(3))
    assert os.listdir(tmp_path) == ['ckpt.pth']  # no temporary files left

    save_checkpoint_atomic({'w': torch.zeros(3)}, str(path))
    assert torch.equal(torch.load(path, weights_only=True)['w'], torch.zeros(3))


def test_atomic_checkpoint_hook_survives_interrupted_save(tmp_path, monkeypatch):
    # max_keep_ckpts=1: mmengine's CheckpointHook deletes epoch_1 *before*
    # writing epoch_2, so an interrupted save would leave nothing.
    make_runner(tmp_path, max_epochs=1, max_keep_ckpts=1).train()
    last = (tmp_path / 'last_checkpoint').read_text()
    assert osp.basename(last) == 'epoch_1.pth'
    before = (tmp_path / 'epoch_1.pth').read_bytes()

    def killed_put(self, obj, filepath):
        with open(filepath, 'wb') as f:
            f.write(obj[:len(obj) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(LocalBackend, 'put', killed_put)
    with pytest.raises(KeyboardInterrupt):
        make_runner(tmp_path, max_epochs=2, max_keep_ckpts=1).train()
    monkeypatch.undo()

    assert (tmp_path / 'epoch_1.pth').read_bytes() == before
    assert (tmp_path / 'last_checkpoint').read_text() == last
    assert not (tmp_path / 'epoch_2.pth').exists()
    assert not glob.glob(str(tmp_path / '.*.tmp'))

    # Training goes on from epoch 1, and the outdated checkpoint is pruned
    # only once the new one is complete.
    runner = make_runner(tmp_path, max_epochs=2, max_keep_ckpts=1)
    runner.train()
    assert runner.epoch == 2
    assert sorted(p.name for p in tmp_path.glob('*.pth')) == ['epoch_2.pth']
    assert osp.basename((tmp_path / 'last_checkpoint').read_text()) == 'epoch_2.pth'
    assert _load_checkpoint(str(tmp_path / 'epoch_2.pth'))['meta']['epoch'] == 2


def test_unreadable_task_file_is_one_line_naming_it(tmp_path):
    from mmdtl.engine import read_task_file
    from mmdtl.utils import UnreadableCheckpointError
    path = tmp_path / 'task_final.pth'
    torch.save(dict(format='mmdtl-task', csn_state={'w': torch.zeros(512)}), path)
    path.write_bytes(path.read_bytes()[:400])  # an interrupted copy
    with pytest.raises(UnreadableCheckpointError) as info:
        read_task_file(str(path))
    msg = str(info.value)
    assert msg.startswith(f'Cannot read checkpoint {path}: it is truncated') and '\n' not in msg
