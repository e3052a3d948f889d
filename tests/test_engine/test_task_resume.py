"""Task files stay consistent with the checkpoints after a kill and --resume."""
import os

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MessageHub, MMLogger
from mmengine.runner import Runner
from mmengine.visualization import Visualizer
from mmpretrain.registry import DATASETS
from mmpretrain.structures import DataSample

import mmdtl  # noqa: F401
from mmdtl.engine import read_task_file

TINY = dict(embed_dims=16, num_layers=2, num_heads=2, feedforward_channels=32)


@DATASETS.register_module(force=True)
class _TaskResumeToyData(torch.utils.data.Dataset):
    """Four random 16x16 images of two classes, in memory."""
    metainfo = dict(classes=('ant', 'bee'))

    def __len__(self):
        return 4

    def __getitem__(self, index):
        generator = torch.Generator().manual_seed(index)
        image = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8, generator=generator)
        return dict(inputs=image, data_samples=DataSample().set_gt_label(index % 2))


@pytest.fixture(autouse=True)
def restore_global_state():
    managers = (MessageHub, MMLogger, Visualizer)
    saved = [manager._instance_dict.copy() for manager in managers]
    yield
    for manager, instances in zip(managers, saved):
        manager._instance_dict = instances


def train(work_dir, max_epochs, max_keep_ckpts=-1, by_epoch=True):
    train_cfg = dict(by_epoch=True, max_epochs=max_epochs) if by_epoch else \
        dict(type='IterBasedTrainLoop', max_iters=2 * max_epochs)
    cfg = Config(dict(
        default_scope='mmpretrain',
        model=dict(
            type='ImageClassifier',
            data_preprocessor=dict(type='ClsDataPreprocessor', mean=[127.5] * 3,
                                   std=[127.5] * 3),
            backbone=dict(type='DTLViT', arch=TINY, img_size=16, patch_size=4,
                          csn=dict(type='CompactSideNetwork', rank=2, start=0)),
            head=dict(type='LinearClsHead', num_classes=2, in_channels=16)),
        work_dir=str(work_dir),
        train_dataloader=dict(batch_size=2, num_workers=0,
                              dataset=dict(type='_TaskResumeToyData'),
                              sampler=dict(type='DefaultSampler', shuffle=False)),
        train_cfg=train_cfg,
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.5)),
        default_hooks=dict(checkpoint=dict(type='AtomicCheckpointHook', by_epoch=by_epoch,
                                           interval=1 if by_epoch else 2,
                                           max_keep_ckpts=max_keep_ckpts)),
        custom_hooks=[dict(type='TaskCheckpointHook')],
        resume=True,  # from work_dir's last_checkpoint when there is one
        log_level='WARNING', randomness=dict(seed=0)))
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner


def task_files(folder):
    return sorted(name for name in os.listdir(folder) if name.startswith('task_'))


@pytest.mark.parametrize('kill', ['deleted', 'truncated'])
def test_resume_writes_the_task_file_a_kill_left_out(tmp_path, kill):
    train(tmp_path, max_epochs=2)
    task = tmp_path / 'task_epoch_2.pth'
    # Killed while task_epoch_2.pth was written (epoch_2.pth was complete): the
    # atomic write leaves no file; a copy cut short leaves part of one.
    if kill == 'deleted':
        task.unlink()
    else:
        task.write_bytes(task.read_bytes()[:200])
    (tmp_path / 'task_final.pth').unlink()

    train(tmp_path, max_epochs=3)
    assert task_files(tmp_path) == ['task_epoch_1.pth', 'task_epoch_2.pth',
                                    'task_epoch_3.pth', 'task_final.pth']
    # It holds the weights of the checkpoint it belongs to.
    content = read_task_file(str(task))
    state = torch.load(tmp_path / 'epoch_2.pth', weights_only=True)['state_dict']
    for name, value in content['csn_state'].items():
        torch.testing.assert_close(value, state[f'backbone.csn.{name}'], rtol=0, atol=0)
    for name, value in content['head_state'].items():
        torch.testing.assert_close(value, state[f'head.{name}'], rtol=0, atol=0)
    assert content['meta']['epoch'] == read_task_file(
        str(tmp_path / 'task_epoch_1.pth'))['meta']['epoch'] + 1


def test_resume_keeps_as_few_task_files_as_checkpoints(tmp_path):
    train(tmp_path, max_epochs=2, max_keep_ckpts=1)
    assert task_files(tmp_path) == ['task_epoch_2.pth', 'task_final.pth']
    train(tmp_path, max_epochs=3, max_keep_ckpts=1)
    assert sorted(p.name for p in tmp_path.glob('epoch_*.pth')) == ['epoch_3.pth']
    assert task_files(tmp_path) == ['task_epoch_3.pth', 'task_final.pth']


def test_resume_writes_the_iteration_task_file_a_kill_left_out(tmp_path):
    train(tmp_path, max_epochs=1, by_epoch=False)  # iter_2.pth, task_iter_2.pth
    (tmp_path / 'task_iter_2.pth').unlink()
    train(tmp_path, max_epochs=2, by_epoch=False)
    assert task_files(tmp_path) == ['task_final.pth', 'task_iter_2.pth', 'task_iter_4.pth']
