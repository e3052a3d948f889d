"""A run whose loss becomes NaN or inf stops with one line (iteration, epoch,
loss, where it first appeared) before a checkpoint of its weights is written."""
import sys
import uuid
from pathlib import Path

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.logging import MessageHub, MMLogger
from mmengine.runner import Runner
from mmengine.visualization import Visualizer
from mmpretrain.structures import DataSample

import mmdtl  # noqa: F401
from mmdtl.engine.hooks import NonFiniteLossError, NonFiniteLossHook

REPO = Path(__file__).resolve().parents[2]
ARCH = dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64)
BAD = 'layers.1.attn.qkv.weight'


def classifier_cfg(std=(127.5, ) * 3, **backbone):
    return dict(
        type='ImageClassifier',
        data_preprocessor=dict(type='ClsDataPreprocessor', mean=[127.5] * 3, std=list(std)),
        backbone=dict(type='DTLViT', arch=ARCH, img_size=32, patch_size=8,
                      csn=dict(type='CompactSideNetwork', rank=2, start=0, dwconv_kernel=3),
                      **backbone),
        head=dict(type='LinearClsHead', num_classes=3, in_channels=ARCH['embed_dims']))


class ToyData(torch.utils.data.Dataset):
    metainfo = dict(classes=('a', 'b', 'c'))

    def __len__(self):
        return 4

    def __getitem__(self, index):
        generator = torch.Generator().manual_seed(index)
        image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=generator)
        return dict(inputs=image, data_samples=DataSample().set_gt_label(index % 3))


class Poison(Hook):
    """Puts a NaN into a tensor of the model at a given epoch (a fault, as a
    damaged trunk or an overflowing step would)."""

    def __init__(self, name, epoch, when='before_train_epoch'):
        self.name, self.epoch, self.when = name, epoch, when
        self.priority = 'VERY_HIGH'

    def _poison(self, runner):
        if runner.epoch == self.epoch:
            with torch.no_grad():
                dict(runner.model.named_parameters())[self.name].view(-1)[0] = float('nan')

    def before_train_epoch(self, runner):
        if self.when == 'before_train_epoch':
            self._poison(runner)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if self.when == 'last_iter' and batch_idx == len(runner.train_dataloader) - 1:
            self._poison(runner)


@pytest.fixture(autouse=True)
def restore_global_state():
    managers = (MessageHub, MMLogger, Visualizer)
    saved = [manager._instance_dict.copy() for manager in managers]
    yield
    for manager, instances in zip(managers, saved):
        manager._instance_dict = instances


def make_runner(work_dir, model, max_epochs=2, stop=True, custom_hooks=None, load_from=None):
    return Runner(
        model=model, work_dir=str(work_dir), experiment_name=f'nan_{uuid.uuid4().hex[:8]}',
        train_dataloader=dict(dataset=ToyData(), batch_size=2, num_workers=0,
                              sampler=dict(type='DefaultSampler', shuffle=False)),
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        default_hooks=dict(
            checkpoint=dict(type='AtomicCheckpointHook', interval=1, max_keep_ckpts=1),
            nonfinite_loss=dict(type='NonFiniteLossHook', stop=stop)),
        custom_hooks=custom_hooks, load_from=load_from, randomness=dict(seed=0),
        default_scope='mmpretrain', log_level='WARNING')


def test_zero_std_stops_at_the_first_iteration(tmp_path):
    runner = make_runner(tmp_path, classifier_cfg(std=(0, 0, 0), allow_random_trunk=True))
    with pytest.raises(NonFiniteLossError) as info:
        runner.train()
    msg = str(info.value)
    assert msg.startswith('Training stopped: the loss is not finite at iteration 1 (epoch 1, '
                          'batch 1 of 2): loss=nan'), msg
    assert 'first non-finite: the inputs after model.data_preprocessor (its std has a 0' in msg
    assert 'default_hooks.nonfinite_loss.stop=False' in msg and '\n' not in msg
    assert not list(tmp_path.glob('*.pth')) and not (tmp_path / 'last_checkpoint').exists()


def test_nan_in_a_pretrained_trunk_is_located(tmp_path):
    """Loaded on purpose with allow_partial_trunk=True (refused otherwise)."""
    torch.manual_seed(0)
    with torch.no_grad():
        model = make_runner(tmp_path / 'x', classifier_cfg(allow_random_trunk=True)).model
        state = {k: v.clone() for k, v in model.state_dict().items() if '.csn.' not in k}
        state[f'backbone.{BAD}'].view(-1)[5] = float('nan')
    ckpt = tmp_path / 'pretrained.pth'
    torch.save(dict(state_dict=state), ckpt)
    runner = make_runner(tmp_path / 'work', classifier_cfg(allow_partial_trunk=True),
                         load_from=str(ckpt))
    with pytest.raises(NonFiniteLossError) as info:
        runner.train()
    msg = str(info.value)
    assert 'at iteration 1 (epoch 1' in msg, msg
    assert f'first non-finite: 1 frozen tensor(s) of the model (backbone.{BAD} (1 NaN))' in msg


def test_good_checkpoint_is_kept_when_epoch_2_diverges(tmp_path):
    runner = make_runner(tmp_path, classifier_cfg(allow_random_trunk=True),
                         custom_hooks=[Poison('head.fc.weight', epoch=1)])
    with pytest.raises(NonFiniteLossError) as info:
        runner.train()
    msg = str(info.value)
    assert 'at iteration 3 (epoch 2, batch 1 of 2)' in msg, msg
    assert 'the inputs, the frozen trunk and its output are finite: the side network' in msg
    assert f'No checkpoint of these weights was written; the last checkpoint is ' \
        f'{tmp_path / "epoch_1.pth"}.' in msg
    # max_keep_ckpts=1 would have replaced epoch_1.pth by a NaN epoch_2.pth
    assert sorted(p.name for p in tmp_path.glob('*.pth')) == ['epoch_1.pth']
    assert (tmp_path / 'last_checkpoint').read_text().endswith('epoch_1.pth')


def test_nonfinite_weights_are_not_saved_though_every_loss_was_finite(tmp_path):
    runner = make_runner(tmp_path, classifier_cfg(allow_random_trunk=True),
                         custom_hooks=[Poison('backbone.csn.up_projs.1', 1, 'last_iter')])
    with pytest.raises(NonFiniteLossError) as info:
        runner.train()
    msg = str(info.value)
    assert msg.startswith('Training stopped before saving the checkpoint of epoch 2: 1 '
                          'trained tensor(s) hold non-finite values (backbone.csn.up_projs.1 '
                          '(1 NaN))'), msg
    assert f'It was not written; the last checkpoint is {tmp_path / "epoch_1.pth"}.' in msg
    assert sorted(p.name for p in tmp_path.glob('*.pth')) == ['epoch_1.pth']


def test_stop_false_keeps_mmengines_behaviour(tmp_path):
    runner = make_runner(tmp_path, classifier_cfg(std=(0, 0, 0), allow_random_trunk=True),
                         stop=False, max_epochs=1)
    hook = next(h for h in runner.hooks if isinstance(h, NonFiniteLossHook))
    runner.train()
    assert hook._warned and runner.iter == 2
    assert (tmp_path / 'epoch_1.pth').exists()


def test_train_tool_stops_with_one_line(tmp_path, monkeypatch, load_cli):
    """tools/train.py on the smoke config with a zero std: one line, exit status 1."""
    from mmdtl.testing import make_vtab_tree
    root = tmp_path / 'data'
    make_vtab_tree(str(root), task='digits', num_classes=10,
                   sizes=dict(train800=4, val200=2, test=2), image_size=32)
    train = load_cli('tools/train.py')
    options = ['data_preprocessor.std=[0,0,0]']
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        options += [f'{loader}.dataset.data_root={root}', f'{loader}.batch_size=2',
                    f'{loader}.num_workers=0', f'{loader}.persistent_workers=False']
    monkeypatch.setattr(sys, 'argv', ['train.py', 'configs/dtl/vit-demo_digits.py',
                                      '--work-dir', str(tmp_path / 'work'),
                                      '--cfg-options', *options])
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as info:
        train.main()
    msg = str(info.value.code)
    assert msg.startswith('NonFiniteLossError: Training stopped: the loss is not finite at '
                          'iteration 1 (epoch 1, batch 1 of 3)'), msg
    assert 'std has a 0' in msg and '\n' not in msg
    assert not list((tmp_path / 'work').glob('*.pth'))
