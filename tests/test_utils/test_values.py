"""Values, not only keys: non-finite weights are refused on every loading path,
an inference model without a trained side network or head says so, and refused
task files name the global without torch's weights_only=False advice."""
import logging
import os
import uuid

import numpy as np
import pytest
import torch
from mmengine.logging import MessageHub, MMLogger
from mmengine.registry import DefaultScope
from mmengine.runner import Runner
from mmengine.visualization import Visualizer
from mmpretrain.registry import MODELS
from mmpretrain.structures import DataSample

import mmdtl  # noqa: F401
from mmdtl.converters.errors import ConversionError
from mmdtl.converters.task_weights import extract_task_weights
from mmdtl.engine import (
    load_backbone_weights,
    load_task_checkpoint,
    read_task_file,
    save_task_checkpoint,
)
from mmdtl.utils import TrunkMismatchError, UnsafeCheckpointError

ARCH = dict(embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64)
CSN = dict(type='CompactSideNetwork', rank=2, start=0, dwconv_kernel=3)
BAD = 'layers.1.attn.qkv.weight'


def vit_cfg(**kwargs):
    return dict(type='DTLViT', arch=ARCH, img_size=32, patch_size=8, csn=CSN, **kwargs)


def classifier_cfg(**backbone):
    return dict(
        type='ImageClassifier',
        data_preprocessor=dict(type='ClsDataPreprocessor', mean=[127.5] * 3, std=[127.5] * 3),
        backbone=vit_cfg(**backbone),
        head=dict(type='LinearClsHead', num_classes=3, in_channels=ARCH['embed_dims']))


def build(cfg, seed=0):
    torch.manual_seed(seed)
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        return MODELS.build(cfg)


def trained_state(poison=None, value=float('nan')):
    """A classifier state dict as training writes it (side network and head
    moved from their start); ``poison`` names a tensor that gets one ``value``."""
    model = build(classifier_cfg())
    for up in model.backbone.csn.up_projs.values():
        torch.nn.init.normal_(up, std=0.5)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if poison is not None:
        state[poison].view(-1)[3] = value
    return state


def save(obj, path):
    torch.save(obj, path)
    return str(path)


@pytest.fixture(autouse=True)
def restore_global_state():
    """A Runner makes itself the current logger, message hub and visualizer."""
    managers = (MessageHub, MMLogger, Visualizer)
    saved = [manager._instance_dict.copy() for manager in managers]
    yield
    for manager, instances in zip(managers, saved):
        manager._instance_dict = instances


@pytest.fixture
def config_file(tmp_path):
    """A config file as mmpretrain's get_model and inferencers read it."""
    path = tmp_path / 'tiny_dtl.py'
    pipeline = [dict(type='LoadImageFromFile'),
                dict(type='Resize', scale=(32, 32), backend='pillow'),
                dict(type='PackInputs')]
    path.write_text(
        "default_scope = 'mmpretrain'\n"
        "custom_imports = dict(imports=['mmdtl'], allow_failed_imports=False)\n"
        f'model = {classifier_cfg()!r}\n'
        f'test_dataloader = dict(dataset=dict(type="CustomDataset", pipeline={pipeline!r}))\n')
    return str(path)


class ToyData(torch.utils.data.Dataset):
    metainfo = dict(classes=('a', 'b', 'c'))

    def __len__(self):
        return 4

    def __getitem__(self, index):
        image = torch.full((3, 32, 32), index * 40, dtype=torch.uint8)
        return dict(inputs=image, data_samples=DataSample().set_gt_label(index % 3))


def make_runner(work_dir, load_from=None, resume=False):
    loader = dict(dataset=ToyData(), batch_size=2, num_workers=0,
                  sampler=dict(type='DefaultSampler', shuffle=False))
    return Runner(
        model=classifier_cfg(), work_dir=str(work_dir),
        experiment_name=f'values_{uuid.uuid4().hex[:8]}',
        train_dataloader=loader, train_cfg=dict(by_epoch=True, max_epochs=1),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
        test_dataloader=loader, test_evaluator=dict(type='Accuracy'), test_cfg=dict(),
        default_hooks=dict(trunk_check=dict(type='TrunkCheckHook'), checkpoint=None),
        load_from=load_from, resume=resume, randomness=dict(seed=0),
        default_scope='mmpretrain', log_level='WARNING')


# ------------------------------------------------------------------ 1. values
PATHS = ['init_cfg', 'load_backbone_weights', 'load_from', 'resume', 'test', 'get_model',
         'inferencer']


@pytest.mark.parametrize('path', PATHS)
def test_nonfinite_trunk_is_refused_on_every_loading_path(tmp_path, config_file, path):
    full = trained_state(poison=f'backbone.{BAD}')
    if path in ('init_cfg', 'load_backbone_weights'):  # a converted backbone
        ckpt = save({k[len('backbone.'):]: v for k, v in full.items()
                     if k.startswith('backbone.') and '.csn.' not in k}, tmp_path / 'trunk.pth')
    else:
        ckpt = save(dict(meta=dict(epoch=1, iter=2), state_dict=full), tmp_path / 'epoch_1.pth')

    with pytest.raises(TrunkMismatchError) as info:
        if path == 'init_cfg':
            build(vit_cfg(init_cfg=dict(type='Pretrained', checkpoint=ckpt))).init_weights()
        elif path == 'load_backbone_weights':  # MultiTaskDTL, tools/multitask_infer.py
            load_backbone_weights(build(vit_cfg()), ckpt)
        elif path in ('load_from', 'resume'):
            make_runner(tmp_path / 'work', ckpt, resume=path == 'resume').train()
        elif path == 'test':  # tools/test.py CKPT
            make_runner(tmp_path / 'work', ckpt).test()
        elif path == 'get_model':
            from mmpretrain.apis import get_model
            get_model(config_file, pretrained=ckpt)
        else:
            from mmpretrain.apis import ImageClassificationInferencer
            ImageClassificationInferencer(config_file, pretrained=ckpt)
    msg = str(info.value)
    assert f'checkpoint {ckpt} holds non-finite values (NaN or inf)' in msg, msg
    assert f'{BAD} (1 NaN)' in msg and 'DTLViT (model.backbone)' in msg or \
        f'{BAD} (1 NaN)' in msg and 'DTLViT (the backbone)' in msg, msg
    assert 'allow_partial_trunk=True' in msg and '\n' not in msg


def test_inf_in_the_side_network_of_a_checkpoint_is_refused(tmp_path):
    """A run that diverged wrote it: its side network is not finite either."""
    state = trained_state(poison='backbone.csn.up_projs.0', value=float('inf'))
    state['backbone.ln2.weight'][0] = float('-inf')
    ckpt = save(dict(state_dict=state), tmp_path / 'diverged.pth')
    with pytest.raises(TrunkMismatchError) as info:
        make_runner(tmp_path / 'work', ckpt).test()
    msg = str(info.value)
    assert 'in 2 of the' in msg and 'csn.up_projs.0 (1 inf)' in msg and 'ln2.weight (1 inf)' in msg


def test_allow_partial_trunk_loads_nonfinite_values_with_a_warning(tmp_path):
    trunk = {k[len('backbone.'):]: v for k, v in trained_state(f'backbone.{BAD}').items()
             if k.startswith('backbone.') and '.csn.' not in k}
    ckpt = save(trunk, tmp_path / 'trunk.pth')
    backbone = build(vit_cfg(allow_partial_trunk=True,
                             init_cfg=dict(type='Pretrained', checkpoint=ckpt)))
    backbone.init_weights()
    assert backbone.trunk_source == ckpt
    assert torch.isnan(backbone.layers[1].attn.qkv.weight).any()


@pytest.mark.parametrize('poison', [f'backbone.{BAD}', 'head.fc.weight'])
def test_extract_task_weights_refuses_nonfinite_values_in_one_line(tmp_path, config_file,
                                                                   poison, capsys, load_cli):
    ckpt = save(dict(state_dict=trained_state(poison)), tmp_path / 'epoch_3.pth')
    out = tmp_path / 'task.pth'
    assert load_cli('tools/extract_task_weights.py').main([ckpt, config_file, str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: ') and '\n' not in err, err
    name = poison if poison.startswith('head.') else BAD
    assert f'{ckpt} holds non-finite values (NaN or inf)' in err and f'{name} (1 NaN)' in err
    assert not out.exists()
    if poison.startswith('head.'):  # the package function raises what the tool prints
        with pytest.raises(ConversionError, match=r'holds non-finite values .*fc\.weight'):
            extract_task_weights(ckpt, config_file, str(out))
        assert not out.exists()


def test_task_file_with_nonfinite_values_is_refused(tmp_path, capsys, load_cli):
    model = build(classifier_cfg())
    trunk = save(model.backbone.state_dict(), tmp_path / 'backbone.pth')
    task = tmp_path / 'task.pth'
    save_task_checkpoint(model, str(task), backbone_checkpoint=trunk)
    content = torch.load(task, weights_only=True)
    content['head_state']['fc.bias'][1] = float('nan')
    torch.save(content, task)
    with pytest.raises(ValueError) as info:
        read_task_file(str(task))
    msg = str(info.value)
    assert f'Task file {task} holds non-finite values (NaN or inf)' in msg
    assert 'head_state.fc.bias (1 NaN)' in msg
    with pytest.raises(ValueError, match='non-finite'):
        load_task_checkpoint(model, str(task))

    config = tmp_path / 'cfg.py'
    config.write_text(f"default_scope = 'mmpretrain'\nmodel = {classifier_cfg()!r}\n"
                      "test_dataloader = dict(dataset=dict(pipeline=[dict(type='PackInputs')]))\n")
    infer = load_cli('tools/multitask_infer.py')
    with pytest.raises(SystemExit) as info:
        infer.main([str(config), str(task), '--images', str(tmp_path),
                    '--backbone-checkpoint', trunk])
    msg = str(info.value.code)
    assert msg.startswith('error: ') and 'head_state.fc.bias (1 NaN)' in msg and '\n' not in msg


# ---------------------------------------------- 3. no trained side network / head
@pytest.fixture
def warnings_seen():
    """WARNING lines mmengine's current logger prints."""
    records = []

    class Keep(logging.Handler):

        def emit(self, record):
            records.append(record.getMessage())

    logger = MMLogger.get_current_instance()
    handler = Keep(level=logging.WARNING)
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


def untrained(lines):
    return [line for line in lines if 'randomly initialised' in line]


@pytest.mark.parametrize('holds', ['trunk_only', 'pretrained_classifier'])
def test_inference_without_trained_side_network_or_head_warns_once(tmp_path, config_file,
                                                                   holds, warnings_seen):
    from mmpretrain.apis import ImageClassificationInferencer, get_model

    state = trained_state()
    if holds == 'trunk_only':
        state = {k: v for k, v in state.items() if k.startswith('backbone.') and '.csn.' not in k}
    else:  # the pre-trained classifier: a head, no side network
        state = {k: v for k, v in state.items() if '.csn.' not in k}
    ckpt = save(dict(state_dict=state), tmp_path / 'pretrained.pth')

    model = get_model(config_file, pretrained=ckpt)
    assert not untrained(warnings_seen)  # said when it predicts, not when it loads
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
        model(torch.zeros(1, 3, 32, 32))
    lines = untrained(warnings_seen)
    assert len(lines) == 1 and '\n' not in lines[0], warnings_seen
    assert f'checkpoint {ckpt}' in lines[0] and 'model.backbone' in lines[0]
    if holds == 'trunk_only':
        assert 'no trained side network (backbone.csn.*) and no head' in lines[0]
        assert 'predictions are meaningless' in lines[0]
    else:
        assert 'no trained side network (backbone.csn.*)' in lines[0]
    assert 'epoch_N.pth' in lines[0]

    warnings_seen.clear()
    inferencer = ImageClassificationInferencer(config_file, pretrained=ckpt)
    inferencer(np.zeros((32, 32, 3), dtype=np.uint8))
    assert len(untrained(warnings_seen)) == 1


def test_trained_checkpoints_and_training_do_not_warn(tmp_path, config_file, warnings_seen):
    from mmpretrain.apis import get_model

    ckpt = save(dict(state_dict=trained_state()), tmp_path / 'epoch_5.pth')
    model = get_model(config_file, pretrained=ckpt)
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))

    # A pre-trained classifier loaded to be fine-tuned: trained before predicting.
    state = {k: v for k, v in trained_state().items() if '.csn.' not in k}
    pretrained = save(dict(state_dict=state), tmp_path / 'pretrained.pth')
    model = get_model(config_file, pretrained=pretrained).train()
    model(torch.zeros(2, 3, 32, 32), [DataSample().set_gt_label(0)] * 2, mode='loss')
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, 32, 32))

    # Or completed by a task file (side network and head) before predicting.
    model = get_model(config_file, pretrained=pretrained)
    task = tmp_path / 'task.pth'
    save_task_checkpoint(model, str(task))
    load_task_checkpoint(model, str(task))
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    assert not untrained(warnings_seen), warnings_seen


# ---------------------------------------------------------- 5. refused pickles
class _RunsCommand:

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, (f'touch {self.path}', )


class _Custom:
    pass


@pytest.mark.parametrize('zip_format', [True, False], ids=['zip', 'legacy'])
@pytest.mark.parametrize('payload', ['command', 'custom'])
def test_crafted_task_file_names_the_global_without_torch_advice(tmp_path, config_file,
                                                                 payload, zip_format, load_cli):
    marker = tmp_path / 'pwned'
    obj, offending = ((_RunsCommand(marker), 'system') if payload == 'command'
                      else (_Custom(), f'{__name__}._Custom'))
    task = tmp_path / 'task_final.pth'
    torch.save(dict(format='mmdtl-task', version=1, csn_state={}, extra=obj), task,
               _use_new_zipfile_serialization=zip_format)
    for load in (read_task_file,
                 lambda p: load_cli('tools/multitask_infer.py').main(
                     [config_file, p, '--images', str(tmp_path)])):
        with pytest.raises((UnsafeCheckpointError, SystemExit)) as info:
            load(str(task))
        msg = str(info.value.code if isinstance(info.value, SystemExit) else info.value)
        assert str(task) in msg and offending in msg, msg
        assert 'weights_only=False' not in msg and 'weights_only` set to `False' not in msg
        assert 'likely succeed' not in msg and '\n' not in msg
    assert not marker.exists()


def test_refusal_without_a_named_global_drops_torch_advice(tmp_path):
    """A pickle opcode weights-only loading forbids: torch's message then
    starts with its weights_only=False advice, which must not be repeated."""
    import zipfile

    from mmdtl.utils import safe_torch_load
    good = tmp_path / 'good.pth'
    torch.save({'a': 1}, good)
    crafted = tmp_path / 'ext_opcode.pth'
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(crafted, 'w') as zout:
        for name in zin.namelist():  # data.pkl: protocol 2, EXT1 1, STOP
            zout.writestr(name, b'\x80\x02\x82\x01.' if name.endswith('data.pkl')
                          else zin.read(name))
    for load in (safe_torch_load, read_task_file):
        with pytest.raises(UnsafeCheckpointError) as info:
            load(str(crafted))
        msg = str(info.value)
        assert str(crafted) in msg and 'Unsupported operand 130' in msg
        assert 'weights_only` set to `False' not in msg and 'likely succeed' not in msg
