"""Task files: size, weights-only loading, backbone fingerprint, hook, extract tool."""
import os

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner
from mmpretrain.registry import DATASETS, MODELS
from mmpretrain.structures import DataSample

import mmdtl  # noqa: F401
from mmdtl.engine import (
    BackboneMismatchError,
    TaskCheckpointHook,
    backbone_fingerprint,
    load_task_checkpoint,
    read_task_file,
    save_task_checkpoint,
)

TINY = dict(embed_dims=16, num_layers=4, num_heads=2, feedforward_channels=32)
# Wide enough that the backbone dwarfs the per-file overhead of torch.save.
SMALL = dict(embed_dims=64, num_layers=4, num_heads=4, feedforward_channels=256)
CLASSES = ('ant', 'bee', 'cow')


def model_cfg(arch=TINY, start=2, kernel=3, rank=2, num_classes=3, img_size=16, patch=4,
              **backbone):
    return dict(
        type='ImageClassifier',
        data_preprocessor=dict(type='ClsDataPreprocessor', mean=[127.5] * 3, std=[127.5] * 3,
                               to_rgb=True),
        backbone=dict(type='DTLViT', arch=arch, img_size=img_size, patch_size=patch,
                      csn=dict(type='CompactSideNetwork', rank=rank, start=start,
                               dwconv_kernel=kernel), **backbone),
        head=dict(type='LinearClsHead', num_classes=num_classes,
                  in_channels=arch['embed_dims'] if isinstance(arch, dict) else 768))


def build(seed=0, randomize=True, **kwargs):
    torch.manual_seed(seed)
    model = MODELS.build(model_cfg(**kwargs)).eval()
    if randomize:  # B = 0 would make every side network equal
        for up in model.backbone.csn.up_projs.values():
            torch.nn.init.normal_(up, std=0.5)
    return model


def tensors_of(content):
    return {f'{part}.{k}': v for part in ('csn_state', 'head_state', 'neck_state')
            for k, v in (content[part] or {}).items()}


def test_task_file_is_small_and_has_no_backbone_tensors(tmp_path):
    model = build(arch=SMALL)
    full = tmp_path / 'epoch_1.pth'
    torch.save(dict(meta=dict(epoch=1), state_dict=model.state_dict()), full)
    task = tmp_path / 'task.pth'
    save_task_checkpoint(model, str(task), class_names=CLASSES)

    assert task.stat().st_size < 0.05 * full.stat().st_size
    content = torch.load(task, weights_only=True)
    names = set(tensors_of(content))
    assert names == ({f'csn_state.{k}' for k in model.backbone.csn.state_dict()}
                     | {f'head_state.{k}' for k in model.head.state_dict()})
    stored = sum(v.numel() for v in tensors_of(content).values())
    assert stored == sum(p.numel() for p in model.backbone.csn.parameters()) + \
        sum(p.numel() for p in model.head.parameters())
    assert content['class_names'] == list(CLASSES)
    assert content['csn_cfg']['start'] == 2 and content['csn_cfg']['dwconv_kernel'] == 3
    assert content['backbone_sha256'] == backbone_fingerprint(model)


def test_vit_b_dtl_plus_task_file_under_1mb(tmp_path):
    torch.manual_seed(0)
    model = MODELS.build(dict(
        type='ImageClassifier',
        backbone=dict(type='DTLViT', arch='b', img_size=224, patch_size=16,
                      csn=dict(type='CompactSideNetwork', rank=2, taps=list(range(12)),
                               start=6, dwconv_kernel=3)),
        head=dict(type='LinearClsHead', num_classes=100, in_channels=768)))
    path = tmp_path / 'cifar.pth'
    content = save_task_checkpoint(model, str(path), backbone_checkpoint='vit-b16.pth')
    values = {k: v.numel() for k, v in tensors_of(content).items()}
    assert sum(v for k, v in values.items() if k.startswith('csn_state')) == 43_776
    assert sum(v for k, v in values.items() if k.startswith('head_state')) == 76_900
    assert path.stat().st_size < 2**20
    assert read_task_file(str(path))['backbone_checkpoint'] == 'vit-b16.pth'


def test_loads_weights_only_and_round_trips(tmp_path):
    model = build(seed=0)
    path = str(tmp_path / 'task.pth')
    save_task_checkpoint(model, path, class_names=CLASSES, meta=dict(note='x', lr=1e-3))
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    content = torch.load(path, map_location='cpu', weights_only=True)
    assert content['meta'] == dict(note='x', lr=1e-3)

    fresh = build(seed=0, randomize=False)  # same backbone, untrained side network
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(fresh(images), model(images))
        load_task_checkpoint(fresh, path)
        torch.testing.assert_close(fresh(images), model(images), rtol=0, atol=0)
    assert fresh._dataset_meta['classes'] == CLASSES


def test_changed_backbone_weight_is_refused(tmp_path):
    model = build(seed=0)
    path = str(tmp_path / 'task.pth')
    content = save_task_checkpoint(model, path)
    other = build(seed=0)
    with torch.no_grad():
        other.backbone.layers[1].attn.qkv.weight[0, 0] += 1e-3
    actual = backbone_fingerprint(other)
    with pytest.raises(BackboneMismatchError) as error:
        load_task_checkpoint(other, path)
    message = str(error.value)
    assert path in message and content['backbone_sha256'] in message and actual in message


def test_fingerprint_ignores_side_network_and_reads_state_dicts():
    model = build(seed=0)
    sha = backbone_fingerprint(model)
    assert sha == backbone_fingerprint(model.backbone)
    assert sha == backbone_fingerprint(model.state_dict())  # 'backbone.*' keys
    assert sha == backbone_fingerprint(dict(state_dict=model.backbone.state_dict()))
    assert sha == backbone_fingerprint(build(seed=0, rank=3, kernel=0))
    assert sha != backbone_fingerprint(build(seed=1))
    assert sha != backbone_fingerprint(model.backbone.double())


def test_other_side_network_config_is_refused(tmp_path):
    path = str(tmp_path / 'task.pth')
    save_task_checkpoint(build(seed=0, start=2), path)
    with pytest.raises(ValueError, match='start: file 2 vs model 1'):
        load_task_checkpoint(build(seed=0, start=1), path)


def test_trainable_backbone_is_refused(tmp_path):
    model = build(freeze_backbone=False)
    with pytest.raises(ValueError, match='freeze_backbone=True'):
        save_task_checkpoint(model, str(tmp_path / 'task.pth'))


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / 'task.pth'
    save_task_checkpoint(build(seed=0), str(path))
    before = path.read_bytes()

    def broken_save(*args, **kwargs):
        raise OSError('disk full')

    monkeypatch.setattr(torch, 'save', broken_save)
    with pytest.raises(OSError, match='disk full'):
        save_task_checkpoint(build(seed=1), str(path))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ['task.pth']  # no temporary file left


@DATASETS.register_module(force=True)
class _TaskHookToyData(torch.utils.data.Dataset):
    """Eight random 16x16 images of three classes, in memory."""
    metainfo = dict(classes=CLASSES)

    def __len__(self):
        return 8

    def __getitem__(self, index):
        generator = torch.Generator().manual_seed(index)
        image = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8, generator=generator)
        return dict(inputs=image, data_samples=DataSample().set_gt_label(index % 3))


def run_training(work_dir, by_epoch=True):
    train_cfg = dict(by_epoch=True, max_epochs=2) if by_epoch else \
        dict(type='IterBasedTrainLoop', max_iters=4)
    cfg = Config(dict(
        default_scope='mmpretrain',
        model=model_cfg(),
        work_dir=str(work_dir),
        train_dataloader=dict(
            batch_size=4, num_workers=0, dataset=dict(type='_TaskHookToyData'),
            sampler=dict(type='DefaultSampler', shuffle=False)),
        train_cfg=train_cfg,
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.5)),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1 if by_epoch else 2,
                                           by_epoch=by_epoch),
                           logger=dict(type='LoggerHook', interval=1)),
        custom_hooks=[dict(type='TaskCheckpointHook')],
        env_cfg=dict(dist_cfg=dict(backend='gloo')),
        log_level='WARNING',
        randomness=dict(seed=0)))
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner


def test_hook_writes_task_files_next_to_checkpoints(tmp_path):
    runner = run_training(tmp_path)
    assert any(isinstance(h, TaskCheckpointHook) for h in runner.hooks)
    files = set(os.listdir(tmp_path))
    assert {'epoch_1.pth', 'epoch_2.pth', 'task_epoch_1.pth', 'task_epoch_2.pth',
            'task_final.pth'} <= files
    assert (tmp_path / 'task_final.pth').stat().st_size < \
        0.5 * (tmp_path / 'epoch_2.pth').stat().st_size

    trained = runner.model.eval()
    content = read_task_file(str(tmp_path / 'task_final.pth'))
    assert content['class_names'] == list(CLASSES)
    assert content['head_cfg']['type'] == 'LinearClsHead'
    assert 'csn' not in content['backbone_cfg']
    # Training moved the side network away from its no-op start.
    assert any(v.abs().sum() > 0 for k, v in content['csn_state'].items()
               if k.startswith('up_projs'))

    fresh = MODELS.build(model_cfg()).eval()
    fresh.backbone.load_state_dict(
        {k: v for k, v in trained.backbone.state_dict().items() if not k.startswith('csn.')},
        strict=False)
    load_task_checkpoint(fresh, str(tmp_path / 'task_final.pth'))
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(fresh(images), trained(images), rtol=0, atol=0)


def test_hook_follows_iteration_based_checkpoints(tmp_path):
    run_training(tmp_path, by_epoch=False)
    files = set(os.listdir(tmp_path))
    assert {'iter_2.pth', 'iter_4.pth', 'task_iter_2.pth', 'task_iter_4.pth',
            'task_final.pth'} <= files
    assert not any(f.startswith('task_epoch') for f in files)


def test_extract_task_weights_tool(tmp_path, capsys, load_cli):
    run_training(tmp_path / 'work')
    config = tmp_path / 'toy.py'
    config.write_text(f'default_scope = "mmpretrain"\nmodel = {model_cfg()!r}\n')
    checkpoint, out = tmp_path / 'work' / 'epoch_2.pth', tmp_path / 'toy.task.pth'
    tool = load_cli('tools/extract_task_weights.py')
    assert tool.main([str(checkpoint), str(config), str(out)]) == 0
    printed = capsys.readouterr().out
    assert 'task file' in printed and '% of the checkpoint' in printed

    extracted = read_task_file(str(out))
    from_hook = read_task_file(str(tmp_path / 'work' / 'task_epoch_2.pth'))
    assert extracted['backbone_sha256'] == from_hook['backbone_sha256']
    assert extracted['class_names'] == list(CLASSES)
    assert extracted['meta']['task_name'] == 'toy'
    for part in ('csn_state', 'head_state'):
        for key, value in from_hook[part].items():
            torch.testing.assert_close(extracted[part][key], value, rtol=0, atol=0)

    # A backbone checkpoint that is not the trained one is refused up front.
    wrong = tmp_path / 'wrong_backbone.pth'
    torch.save(dict(state_dict=build(seed=5).backbone.state_dict()), wrong)
    assert tool.main([str(checkpoint), str(config), str(tmp_path / 'x.pth'),
                      '--backbone-checkpoint', str(wrong)]) == 1
    assert 'would not load' in capsys.readouterr().err
    assert not (tmp_path / 'x.pth').exists()
