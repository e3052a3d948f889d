"""Weights that do not fit the frozen trunk are refused, wherever they come from,
and training never starts on a trunk no checkpoint was loaded into."""
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from mmengine.logging import MessageHub, MMLogger
from mmengine.registry import DefaultScope
from mmengine.runner import Runner
from mmengine.visualization import Visualizer
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample

import mmdtl  # noqa: F401
from mmdtl.engine import load_backbone_weights, save_task_checkpoint
from mmdtl.engine.hooks import TrunkCheckHook
from mmdtl.utils import (
    TrunkMismatchError,
    TrunkNotLoadedError,
    UntrainedCheckpointError,
    check_trunks_loaded,
)

REPO = Path(__file__).resolve().parents[2]
ARCH = dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64)
WIDE = dict(ARCH, embed_dims=48)
CSN = dict(type='CompactSideNetwork', rank=2, start=0, dwconv_kernel=3)


def vit_cfg(arch=ARCH, **kwargs):
    return dict(type='DTLViT', arch=arch, img_size=32, patch_size=8, csn=CSN, **kwargs)


def classifier_cfg(**backbone):
    return dict(
        type='ImageClassifier',
        data_preprocessor=dict(type='ClsDataPreprocessor', mean=[127.5] * 3, std=[127.5] * 3),
        backbone=vit_cfg(**backbone),
        head=dict(type='LinearClsHead', num_classes=3, in_channels=ARCH['embed_dims']))


def build(cfg):
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        return MODELS.build(cfg)


def trunk_state(arch=ARCH):
    """A trunk in mmpretrain's layout (final norm as ln1), as a converter writes it."""
    torch.manual_seed(0)
    vit = build(dict(type='VisionTransformer', arch=arch, img_size=32, patch_size=8))
    return vit.state_dict()


def timm_state(arch=ARCH, lora=False):
    """The same trunk under timm's ViT names (the released DTL code's layout)."""
    dims, ffn = arch['embed_dims'], arch['feedforward_channels']
    state = {'patch_embed.proj.weight': torch.zeros(dims, 3, 8, 8),
             'patch_embed.proj.bias': torch.zeros(dims), 'cls_token': torch.zeros(1, 1, dims),
             'pos_embed': torch.zeros(1, 17, dims), 'norm.weight': torch.ones(dims),
             'norm.bias': torch.zeros(dims)}
    for i in range(arch['num_layers']):
        state.update({f'blocks.{i}.norm1.weight': torch.ones(dims),
                      f'blocks.{i}.attn.qkv.weight': torch.zeros(3 * dims, dims),
                      f'blocks.{i}.mlp.fc1.weight': torch.zeros(ffn, dims)})
        if lora:
            state[f'lora_dict.{i}.lora_A'] = torch.zeros(2, dims)
    return state


def save(obj, path):
    torch.save(obj, path)
    return str(path)


# ------------------------------------------------------ init_cfg=Pretrained
def make_source(kind, tmp_path):
    """(checkpoint file, init_cfg prefix) of each layout."""
    path = tmp_path / f'{kind}.pth'
    trunk = trunk_state()
    if kind == 'converted':  # bare keys, final norm ln1: loads into DTLViT's ln2
        return save(trunk, path), None
    if kind == 'classifier':
        return save(dict(state_dict={f'backbone.{k}': v for k, v in trunk.items()}), path), \
            'backbone.'
    if kind == 'classifier_no_prefix':
        return save(dict(state_dict={f'backbone.{k}': v for k, v in trunk.items()}), path), None
    if kind == 'wider':
        return save(trunk_state(WIDE), path), None
    if kind == 'partial':
        return save({k: v for k, v in trunk.items() if not k.startswith('layers.1.')}, path), \
            None
    if kind == 'timm':
        return save(dict(model=timm_state()), path), None
    if kind == 'official_dtl':
        return save(timm_state(lora=True), path), None
    if kind == 'google_keys':  # an .npz's arrays re-saved as a dict
        return save({'Transformer/encoderblock_0/LayerNorm_0/scale': torch.ones(32),
                     'embedding/kernel': torch.zeros(8, 8, 3, 32)}, path), None
    if kind == 'task_file':
        model = build(classifier_cfg())
        save_task_checkpoint(model, str(path))
        return str(path), None
    raise ValueError(kind)


@pytest.mark.parametrize('kind', ['converted', 'classifier'])
def test_pretrained_that_fits_loads(tmp_path, kind):
    path, prefix = make_source(kind, tmp_path)
    backbone = build(vit_cfg(init_cfg=dict(type='Pretrained', checkpoint=path, prefix=prefix)))
    assert backbone.trunk_source is None
    backbone.init_weights()
    assert backbone.trunk_source == path
    trunk = trunk_state()
    assert torch.equal(backbone.ln2.weight, trunk['ln1.weight'])  # renamed, not missing
    assert torch.equal(backbone.layers[1].attn.qkv.weight, trunk['layers.1.attn.qkv.weight'])


@pytest.mark.parametrize('kind, counts, hint', [
    ('wider', '28 of its 30 tensors have another shape', 'another size'),
    ('partial', '12 of its 30 tensors are missing (layers.1.', 'this arch'),
    ('classifier_no_prefix', '30 of its 30 tensors are missing', "prefix='backbone.'"),
    ('timm', '30 of its 30 tensors are missing', 'timm ViT'),
    ('official_dtl', '28 of its 30', 'official_dtl_to_mmdtl.py'),
    ('google_keys', '30 of its 30', 'vit_npz_to_mmpretrain.py'),
    ('task_file', '30 of its 30', 'task file'),
])
def test_pretrained_that_does_not_fit_is_refused(tmp_path, kind, counts, hint):
    path, prefix = make_source(kind, tmp_path)
    backbone = build(vit_cfg(init_cfg=dict(type='Pretrained', checkpoint=path, prefix=prefix)))
    with pytest.raises(TrunkMismatchError) as info:
        backbone.init_weights()
    msg = str(info.value)
    assert f'checkpoint {path} does not fit the frozen trunk of DTLViT' in msg
    assert counts in msg and hint in msg
    assert 'allow_partial_trunk=True' in msg  # the expert opt-out is named
    assert backbone.trunk_source is None


def test_allow_partial_trunk_loads_with_a_warning(tmp_path):
    path, _ = make_source('partial', tmp_path)
    backbone = build(vit_cfg(allow_partial_trunk=True,
                             init_cfg=dict(type='Pretrained', checkpoint=path)))
    backbone.init_weights()
    assert backbone.trunk_source == path
    assert torch.equal(backbone.layers[0].attn.qkv.weight,
                       trunk_state()['layers.0.attn.qkv.weight'])


def test_swin_recomputed_buffers_are_not_required_and_layouts_are_named(tmp_path):
    arch = dict(embed_dims=16, depths=[1, 1], num_heads=[1, 2])
    cfg = dict(type='DTLSwin', arch=arch, img_size=32, window_size=4, out_indices=(1, ),
               csn=dict(type='CompactSideNetwork', rank=2, start=0))
    torch.manual_seed(0)
    plain = build(dict(type='SwinTransformer', arch=arch, img_size=32, window_size=4,
                       out_indices=(1, )))
    state = {k: v for k, v in plain.state_dict().items() if 'relative_position_index' not in k}
    swin = build(cfg)
    swin.load_state_dict(state, strict=False)  # the index buffers are rebuilt at init
    assert swin.trunk_source == 'a state dict in memory'
    # mmcls < 2 named the last stage's norm `norm.`: renamed by the parent, not missing.
    old = {('norm.' + k[len('norm1.'):] if k.startswith('norm1.') else k): v
           for k, v in state.items()}
    swin = build(cfg)
    swin.load_state_dict(old, strict=False)
    assert torch.equal(swin.norm1.weight, state['norm1.weight'])

    official = {'patch_embed.proj.weight': torch.zeros(16, 3, 4, 4),
                'layers.0.blocks.0.attn.qkv.weight': torch.zeros(48, 16)}
    path = save(dict(model=official), tmp_path / 'swin_official.pth')
    swin = build(dict(cfg, init_cfg=dict(type='Pretrained', checkpoint=path)))
    with pytest.raises(TrunkMismatchError, match=r'swin_official\.pth.*swin_to_mmpretrain\.py'):
        swin.init_weights()


def test_multitask_backbone_checkpoint_is_checked(tmp_path):
    """MultiTaskDTL and the inferencer load their backbone with load_backbone_weights."""
    path, _ = make_source('wider', tmp_path)
    with pytest.raises(TrunkMismatchError, match=f'checkpoint {path} does not fit'):
        load_backbone_weights(build(vit_cfg()), path)
    path, _ = make_source('classifier', tmp_path)
    backbone = build(vit_cfg())
    load_backbone_weights(backbone, path)
    assert backbone.trunk_source == path


# ------------------------------------------------------------- mmengine Runner
@pytest.fixture(autouse=True)
def restore_global_state():
    """A Runner makes itself the current logger, message hub and visualizer."""
    managers = (MessageHub, MMLogger, Visualizer)
    saved = [manager._instance_dict.copy() for manager in managers]
    yield
    for manager, instances in zip(managers, saved):
        manager._instance_dict = instances


class ToyData(torch.utils.data.Dataset):
    metainfo = dict(classes=('a', 'b', 'c'))

    def __len__(self):
        return 4

    def __getitem__(self, index):
        image = torch.full((3, 32, 32), index * 40, dtype=torch.uint8)
        return dict(inputs=image, data_samples=DataSample().set_gt_label(index % 3))


def make_runner(work_dir, load_from=None, resume=False, **backbone):
    loader = dict(dataset=ToyData(), batch_size=2, num_workers=0,
                  sampler=dict(type='DefaultSampler', shuffle=False))
    return Runner(
        model=classifier_cfg(**backbone), work_dir=str(work_dir),
        experiment_name=f'trunk_{uuid.uuid4().hex[:8]}',
        train_dataloader=loader, train_cfg=dict(by_epoch=True, max_epochs=1),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        test_dataloader=loader, test_evaluator=dict(type='Accuracy'),
        test_cfg=dict(), default_hooks=dict(trunk_check=dict(type='TrunkCheckHook'),
                                            checkpoint=None),
        load_from=load_from, resume=resume, randomness=dict(seed=0),
        default_scope='mmpretrain', log_level='WARNING')


def test_runner_refuses_a_trunk_never_loaded(tmp_path):
    runner = make_runner(tmp_path)
    assert any(isinstance(h, TrunkCheckHook) for h in runner.hooks)
    with pytest.raises(TrunkNotLoadedError) as info:
        runner.train()
    msg = str(info.value)
    assert 'DTLViT (model.backbone) was never loaded' in msg
    assert 'model.backbone.allow_random_trunk=True' in msg and 'load_from' in msg
    assert runner.iter == 0

    # Explicitly allowed (a random-trunk control), and unfrozen trunks, train.
    check_trunks_loaded(build(classifier_cfg(allow_random_trunk=True)))
    check_trunks_loaded(build(classifier_cfg(freeze_backbone=False)))
    with pytest.raises(TrunkNotLoadedError):
        check_trunks_loaded(build(classifier_cfg()))


@pytest.mark.parametrize('kind', ['load_from', 'resume', 'test'])
def test_runner_refuses_checkpoints_that_do_not_fit(tmp_path, kind):
    if kind == 'load_from':  # a converted backbone passed as load_from: no backbone. prefix
        path, _ = make_source('converted', tmp_path)
        hint = 'backbone-only checkpoint'
    elif kind == 'resume':  # a training checkpoint of another width
        trunk = trunk_state(WIDE)
        path = save(dict(meta=dict(epoch=1, iter=2),
                         state_dict={f'backbone.{k}': v for k, v in trunk.items()}),
                    tmp_path / 'epoch_1.pth')
        hint = 'another size'
    else:  # tools/test.py CKPT: a timm checkpoint
        path, _ = make_source('timm', tmp_path)
        hint = 'timm ViT'
    runner = make_runner(tmp_path / 'work', load_from=path, resume=kind == 'resume')
    with pytest.raises(TrunkMismatchError) as info:
        runner.test() if kind == 'test' else runner.train()
    msg = str(info.value)
    assert f'checkpoint {path} does not fit the frozen trunk of DTLViT (model.backbone)' in msg
    assert hint in msg


def test_runner_loads_a_fitting_classifier_checkpoint(tmp_path):
    path, _ = make_source('classifier', tmp_path)
    runner = make_runner(tmp_path / 'work', load_from=path)
    runner.train()
    assert runner.model.backbone.trunk_source == path
    assert torch.equal(runner.model.backbone.layers[1].ffn.layers[1].weight,
                       trunk_state()['layers.1.ffn.layers.1.weight'])
    runner.test()  # evaluates what training wrote: no trained tensors are missing
    # The trained model saved and tested again: it has everything.
    trained = tmp_path / 'trained.pth'
    torch.save(dict(state_dict=runner.model.state_dict()), trained)
    make_runner(tmp_path / 'work2', load_from=str(trained)).test()


@pytest.mark.parametrize('what', ['pretrained_classifier', 'other_task'])
def test_testing_a_checkpoint_without_trained_weights_is_refused(tmp_path, what):
    """tools/test.py CKPT with the pre-trained weights (trunk fits, no side network or
    head) or another task's classifier (head of another size): random tensors."""
    model = build(classifier_cfg())
    state = model.state_dict()
    if what == 'pretrained_classifier':
        state = {k: v for k, v in state.items() if not k.startswith(('backbone.csn.', 'head.'))}
        expected = 'lacks 7 of the 7 trained tensors (backbone.csn.'  # 2 A, 2 B, conv, fc
    else:
        state['head.fc.weight'] = torch.zeros(5, ARCH['embed_dims'])
        state['head.fc.bias'] = torch.zeros(5)
        expected = 'has 2 with another shape (head.fc.weight (5, 32) in the checkpoint vs (3, 32)'
    path = save(dict(state_dict=state), tmp_path / f'{what}.pth')
    runner = make_runner(tmp_path / 'work', load_from=path)
    with pytest.raises(UntrainedCheckpointError) as info:
        runner.test()
    msg = str(info.value)
    assert msg.startswith(f'The checkpoint {path} ') and expected in msg, msg
    assert 'check_test_checkpoint=False' in msg


# ----------------------------------------------------------------------- tools
def data_options(root):
    opts = []
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        opts += [f'{loader}.dataset.data_root={root}', f'{loader}.batch_size=4',
                 f'{loader}.num_workers=0', f'{loader}.persistent_workers=False']
    return opts


@pytest.fixture(scope='module')
def digits(tmp_path_factory):
    from mmdtl.testing import make_vtab_tree
    root = tmp_path_factory.mktemp('digits')
    make_vtab_tree(str(root), task='digits', num_classes=10,
                   sizes=dict(train800=4, val200=2, test=2), image_size=32)
    return root


def test_train_tool_exits_nonzero_on_a_random_trunk(tmp_path, digits):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    env['PYTHONPATH'] = os.pathsep.join([str(REPO), env.get('PYTHONPATH', '')])
    proc = subprocess.run(
        [sys.executable, 'tools/train.py', 'configs/dtl/vit-demo_digits.py', '--work-dir',
         str(tmp_path), '--cfg-options', *data_options(digits),
         'model.backbone.allow_random_trunk=False'],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=300)
    assert proc.returncode != 0
    assert 'TrunkNotLoadedError: The frozen trunk of DTLViT (model.backbone) was never ' \
        'loaded' in proc.stdout, proc.stdout[-3000:]
    assert 'Traceback' not in proc.stdout
    assert not list(tmp_path.glob('epoch_*.pth'))


def test_test_tool_exits_with_the_message(tmp_path, digits, monkeypatch, load_cli):
    """tools/test.py CKPT with a checkpoint of another width (in-process main)."""
    test = load_cli('tools/test.py')

    demo = dict(embed_dims=64, num_layers=6, num_heads=4, feedforward_channels=128)
    wrong = trunk_state(dict(demo, embed_dims=32))
    ckpt = save(dict(state_dict={f'backbone.{k}': v for k, v in wrong.items()}),
                tmp_path / 'other_width.pth')
    monkeypatch.setattr(sys, 'argv', ['test.py', 'configs/dtl/vit-demo_digits.py', ckpt,
                                      '--work-dir', str(tmp_path),
                                      '--cfg-options', *data_options(digits)])
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as info:
        test.main()
    msg = str(info.value.code)
    assert msg.startswith(f'TrunkMismatchError: The checkpoint {ckpt} does not fit the frozen '
                          f'trunk of DTLViT (model.backbone)')
    assert 'have another shape' in msg
