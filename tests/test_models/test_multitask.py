"""MultiTaskDTL: shared prefix once, outputs equal to the single-task models."""

import numpy as np
import pytest
import torch
from mmengine.dataset import Compose, default_collate
from mmpretrain.models import VisionTransformer
from mmpretrain.registry import MODELS, TRANSFORMS

import mmdtl  # noqa: F401
from mmdtl.engine import BackboneMismatchError, save_task_checkpoint
from mmdtl.models import MultiTaskDTL, MultiTaskInferencer

ARCH = dict(embed_dims=16, num_layers=6, num_heads=2, feedforward_channels=32)
BACKBONE = dict(type='DTLViT', arch=ARCH, img_size=16, patch_size=4,
                csn=dict(type='CompactSideNetwork'))
# Three tasks with different M, taps, ranks, kernels and class counts.
TASKS = {
    'birds': dict(csn=dict(start=1, taps=None, rank=2, dwconv_kernel=3), classes=3),
    'cars': dict(csn=dict(start=4, taps=[0, 2, 5], rank=1, dwconv_kernel=0), classes=5),
    'dogs': dict(csn=dict(start=2, taps=[1, 3], rank=3, dwconv_kernel=5), classes=7),
}
PIPELINE = [dict(type='LoadImageFromFile'),
            dict(type='Resize', scale=(16, 16), interpolation='bicubic', backend='pillow'),
            dict(type='PackInputs')]
PREPROCESSOR = dict(mean=[127.5] * 3, std=[127.5] * 3, to_rgb=True)


def single_model(csn, classes, seed):
    torch.manual_seed(seed)
    model = MODELS.build(dict(
        type='ImageClassifier', data_preprocessor=dict(type='ClsDataPreprocessor',
                                                       **PREPROCESSOR),
        backbone=dict(BACKBONE, csn=dict(type='CompactSideNetwork', **csn)),
        head=dict(type='LinearClsHead', num_classes=classes, in_channels=16))).eval()
    for up in model.backbone.csn.up_projs.values():
        torch.nn.init.normal_(up, std=0.5)
    return model


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    """Three trained-looking single-task models on one backbone, saved as files."""
    folder = tmp_path_factory.mktemp('multitask')
    torch.manual_seed(123)
    reference = MODELS.build(BACKBONE)
    torch.nn.init.normal_(reference.pos_embed, std=0.2)  # not the all-zero start
    torch.nn.init.normal_(reference.cls_token, std=0.2)
    backbone_state = {k: v for k, v in reference.state_dict().items()
                      if not k.startswith('csn.')}
    backbone_file = str(folder / 'backbone.pth')
    torch.save(dict(state_dict=backbone_state, meta=dict()), backbone_file)

    models, files = {}, {}
    for seed, (name, spec) in enumerate(TASKS.items()):
        model = single_model(spec['csn'], spec['classes'], seed)
        model.backbone.load_state_dict(backbone_state, strict=False)
        files[name] = str(folder / f'{name}.pth')
        save_task_checkpoint(model, files[name], backbone_checkpoint=backbone_file,
                             class_names=[f'{name}_{i}' for i in range(spec['classes'])],
                             meta=dict(task_name=name))
        models[name] = model
    return dict(folder=folder, backbone_file=backbone_file, models=models, files=files,
                backbone_state=backbone_state)


@pytest.mark.parametrize('batch_tasks,packed', [(True, False), (False, False), (True, True)])
def test_outputs_equal_single_task_models(setup, batch_tasks, packed):
    multi = MultiTaskDTL(dict(BACKBONE, pack_frozen_weights=packed),
                         list(setup['files'].values()),
                         backbone_checkpoint=setup['backbone_file'], batch_tasks=batch_tasks)
    assert multi.task_names == list(TASKS)
    assert multi.starts == {n: t['csn']['start'] for n, t in TASKS.items()}
    images = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        outputs = multi(images)
        for name, model in setup['models'].items():
            expected = model(images)
            assert outputs[name].shape == (3, TASKS[name]['classes'])
            torch.testing.assert_close(outputs[name], expected, rtol=1e-5, atol=1e-5)
            # The side network matters: the plain backbone would give other logits.
            plain = model.head(VisionTransformer.forward(model.backbone, images))
            assert not torch.allclose(plain, expected, atol=1e-3)
        scores = multi(images, mode='predict')
    # Every frozen linear of the 6 blocks ran on its packed copy (the frozen
    # side networks' projections too).
    packs = multi.backbone.frozen_linear_packs
    if packed:
        linears = [m.weight for m in multi.backbone.layers.modules()
                   if isinstance(m, torch.nn.Linear)]
        assert len(linears) == 4 * 6
        assert {(id(w), False) for w in linears} <= set(packs._entries)
    else:
        assert packs is None
    torch.testing.assert_close(scores['cars'].sum(1), torch.ones(3))


def test_prefix_runs_once(setup):
    """Blocks 0..max M see one trunk batch; later blocks one batch per branched task."""
    multi = MultiTaskDTL(BACKBONE, setup['files'], backbone_checkpoint=setup['backbone_file'])
    seen = []
    for i, layer in enumerate(multi.backbone.layers):
        layer.register_forward_hook(lambda m, args, out, i=i: seen.append((i, len(args[0]))))
    batch = 2
    with torch.no_grad():
        multi(torch.randn(batch, 3, 16, 16))
    starts = sorted(t['csn']['start'] for t in TASKS.values())  # 1, 2, 4
    expected = [(i, batch * ((i <= max(starts)) + sum(s < i for s in starts)))
                for i in range(ARCH['num_layers'])]
    assert seen == expected  # one call per block: streams are batched together
    separate = len(TASKS) * ARCH['num_layers'] * batch
    assert sum(n for _, n in seen) == batch * 13 < separate


def test_backbone_mismatch_is_refused(setup, tmp_path):
    state = {k: v.clone() for k, v in setup['backbone_state'].items()}
    state['layers.3.ffn.layers.1.weight'][0, 0] += 1e-3
    wrong = str(tmp_path / 'wrong.pth')
    torch.save(dict(state_dict=state), wrong)
    with pytest.raises(BackboneMismatchError, match='birds.pth.*expected backbone sha256'):
        MultiTaskDTL(BACKBONE, setup['files'], backbone_checkpoint=wrong)


def test_task_names(setup):
    files = list(setup['files'].values())
    with pytest.raises(ValueError, match='not unique'):
        MultiTaskDTL(BACKBONE, files[:1] * 2, backbone_checkpoint=setup['backbone_file'])
    multi = MultiTaskDTL(BACKBONE, {'a': files[0], 'b': files[0]},
                         backbone_checkpoint=setup['backbone_file'])
    assert multi.task_names == ['a', 'b']
    # The checkpoint recorded in the task files is used when none is given.
    assert MultiTaskDTL(BACKBONE, files).backbone_checkpoint == setup['backbone_file']


def write_config(folder, backbone_file=None):
    config = folder / 'backbone_cfg.py'
    backbone = dict(BACKBONE)
    if backbone_file:
        backbone['init_cfg'] = dict(type='Pretrained', checkpoint=backbone_file)
    config.write_text(
        'default_scope = "mmpretrain"\n'
        f'model = dict(type="ImageClassifier", backbone={backbone!r})\n'
        f'data_preprocessor = {PREPROCESSOR!r}\n'
        f'test_dataloader = dict(dataset=dict(pipeline={PIPELINE!r}))\n')
    return str(config)


def write_images(folder, count=3):
    from PIL import Image
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = rng.integers(0, 256, (20 + 4 * i, 24, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f'img{i}.png')
    (folder / 'notes.txt').write_text('not an image')
    return sorted(str(p) for p in folder.glob('*.png'))


def test_inferencer_matches_mmpretrain_preprocessing(setup, tmp_path):
    paths = write_images(tmp_path / 'images')
    inferencer = MultiTaskInferencer(write_config(tmp_path), setup['backbone_file'],
                                     setup['files'], batch_size=2)
    results = inferencer(str(tmp_path / 'images'), topk=2)
    assert len(results) == len(paths)
    assert list(results[0]) == list(TASKS)
    assert all(len(top) == 2 for r in results for top in r.values())

    # Reference: mmpretrain's own test pipeline + data preprocessor + single model.
    pipeline = Compose([TRANSFORMS.build(t) for t in PIPELINE])
    model = setup['models']['dogs']
    batch = default_collate([pipeline(dict(img_path=p)) for p in paths])
    with torch.no_grad():
        scores = model(model.data_preprocessor(batch, False)['inputs']).softmax(-1)
    for row, result in zip(scores, results):
        values, indices = row.topk(2)
        assert [c for c, _ in result['dogs']] == [f'dogs_{i}' for i in indices.tolist()]
        np.testing.assert_allclose([s for _, s in result['dogs']], values.tolist(),
                                   rtol=1e-5, atol=1e-6)

    # BGR arrays (mmpretrain's convention) give the same answers as the files.
    import mmcv
    from_arrays = inferencer([mmcv.imread(p) for p in paths], topk=2)
    for a, b in zip(from_arrays, results):
        for name in TASKS:
            assert [c for c, _ in a[name]] == [c for c, _ in b[name]]
            np.testing.assert_allclose([s for _, s in a[name]], [s for _, s in b[name]],
                                       rtol=1e-5, atol=1e-6)


def test_inferencer_decodes_paths_with_the_config_loader(setup, tmp_path):
    """The recipe configs load with LoadImageFromFilePIL (the release's PIL
    decoding, EXIF orientation ignored): the inferencer reads paths with the
    config's own loader, so it sees the pixels training and testing saw."""
    from PIL import Image
    pil_pipeline = [dict(type='LoadImageFromFilePIL')] + PIPELINE[1:]
    config = tmp_path / 'pil_cfg.py'
    config.write_text(
        'default_scope = "mmpretrain"\n'
        f'model = dict(type="ImageClassifier", backbone={BACKBONE!r})\n'
        f'data_preprocessor = {PREPROCESSOR!r}\n'
        f'test_dataloader = dict(dataset=dict(pipeline={pil_pipeline!r}))\n')
    pixels = np.random.default_rng(1).integers(0, 256, (24, 40, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees on display
    path = str(tmp_path / 'rotated.jpg')
    Image.fromarray(pixels).save(path, exif=exif, quality=95)

    inferencer = MultiTaskInferencer(str(config), setup['backbone_file'], setup['files'])
    scores = inferencer.predict_scores([path])
    pipeline = Compose([TRANSFORMS.build(t) for t in pil_pipeline])
    model = setup['models']['dogs']
    batch = default_collate([pipeline(dict(img_path=path))])
    with torch.no_grad():
        expected = model(model.data_preprocessor(batch, False)['inputs']).softmax(-1)
    torch.testing.assert_close(scores['dogs'], expected, rtol=1e-5, atol=1e-6)


def test_multitask_infer_cli(setup, tmp_path, capsys, load_cli):
    paths = write_images(tmp_path / 'images', count=2)
    # The backbone checkpoint comes from the config's Pretrained init_cfg here.
    config = write_config(tmp_path, backbone_file=setup['backbone_file'])
    tool = load_cli('tools/multitask_infer.py')
    assert tool.main([config, *setup['files'].values(), '--images',
                      str(tmp_path / 'images'), '--topk', '2']) == 0
    printed = capsys.readouterr().out
    for path in paths:
        assert path in printed
    for name, spec in TASKS.items():
        assert f'{name}: M={spec["csn"]["start"]}' in printed
        lines = [ln for ln in printed.splitlines() if ln.strip().startswith(name + ' ')]
        assert len(lines) == len(paths)
        assert all(ln.count(f'{name}_') == 2 for ln in lines)  # top-2 class names


@pytest.mark.parametrize('arch', ['vit-tiny', 'swin-tiny'])
def test_multitask_benchmark_tiny(tmp_path, capsys, arch, load_cli):
    tool = load_cli('tools/analysis/multitask_benchmark.py')
    code = tool.main(['--arch', arch, '--work-dir', str(tmp_path), '--batch-size', '2',
                      '--warmup', '0', '--repeats', '1', '--num-threads', '1'])
    assert code == 0
    assert '[multitask_benchmark] K=10' in capsys.readouterr().out
    table = (tmp_path / 'multitask_benchmark.md').read_text()
    assert '| tasks |' in table
    import csv
    with open(tmp_path / 'multitask_benchmark.csv') as f:
        rows = {int(r['tasks']): r for r in csv.DictReader(f)}
    assert sorted(rows) == [1, 2, 5, 10]
    ten = rows[10]
    assert float(ten['flops_ratio']) <= 1.1 * float(ten['target_ratio'])
    assert float(ten['max_abs_diff']) < 1e-5
    assert float(rows[1]['flops_ratio']) == pytest.approx(1.0, abs=0.01)


SWIN_BACKBONE = dict(type='DTLSwin', arch=dict(embed_dims=16, depths=[2, 2, 2, 2],
                                              num_heads=[1, 2, 2, 4]),
                     img_size=32, window_size=2, drop_path_rate=0., pad_small_map=True,
                     out_indices=(0, 1, 2, 3), csn=dict(type='CompactSideNetwork'))
# M in stage 0, at the end of stage 1 and inside stage 2; kernels per stage.
SWIN_TASKS = {
    'early': dict(start=1, taps=[0, 2, 4, 6], rank=2, dwconv_kernel=3),
    'middle': dict(start=3, taps=None, rank=1, dwconv_kernel=0),
    'late': dict(start=4, taps=[4, 6, 7], rank=3, dwconv_kernel=5),
}


@pytest.fixture(scope='module', params=[False, True], ids=['out_before_merge', 'out_after_merge'])
def swin_setup(request, tmp_path_factory):
    """Three Swin classifiers (every stage out, GAP neck, head) on one
    backbone, saved as task files."""
    backbone_cfg = dict(SWIN_BACKBONE, out_after_downsample=request.param)
    folder = tmp_path_factory.mktemp('multitask_swin')
    torch.manual_seed(7)
    reference = MODELS.build(backbone_cfg)
    for name, param in reference.named_parameters():
        if 'relative_position_bias_table' in name:
            torch.nn.init.normal_(param, std=0.2)  # not the all-zero start
    backbone_state = {k: v for k, v in reference.state_dict().items()
                      if not k.startswith('csn.')}
    backbone_file = str(folder / 'swin_backbone.pth')
    torch.save(dict(state_dict=backbone_state, meta=dict()), backbone_file)
    models, files = {}, {}
    for seed, (name, csn) in enumerate(SWIN_TASKS.items()):
        torch.manual_seed(seed)
        model = MODELS.build(dict(
            type='ImageClassifier', backbone=dict(backbone_cfg, csn=dict(
                type='CompactSideNetwork', **csn)),
            neck=dict(type='GlobalAveragePooling'),
            head=dict(type='LinearClsHead', num_classes=4 + seed, in_channels=128))).eval()
        for up in model.backbone.csn.up_projs.values():
            torch.nn.init.normal_(up, std=0.5)
        model.backbone.load_state_dict(backbone_state, strict=False)
        files[name] = str(folder / f'{name}.pth')
        save_task_checkpoint(model, files[name], backbone_checkpoint=backbone_file,
                             meta=dict(task_name=name))
        models[name] = model
    return dict(backbone_cfg=backbone_cfg, backbone_file=backbone_file, models=models,
                files=files)


@pytest.mark.parametrize('batch_tasks', [True, False])
def test_swin_outputs_equal_single_task_models(swin_setup, batch_tasks):
    """Logits and every stage's features equal each task's own model,
    including stages that end before a task's M (shared with the trunk)."""
    multi = MultiTaskDTL(swin_setup['backbone_cfg'], swin_setup['files'],
                         backbone_checkpoint=swin_setup['backbone_file'],
                         batch_tasks=batch_tasks)
    assert multi.starts == {n: c['start'] for n, c in SWIN_TASKS.items()}
    blocks = [b for stage in multi.backbone.stages for b in stage.blocks]
    seen = []
    for i, block in enumerate(blocks):
        block.register_forward_hook(lambda m, args, out, i=i: seen.append((i, len(args[0]))))
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        outputs = multi(images)
        feats = multi.extract_feat(images)
        for name, model in swin_setup['models'].items():
            torch.testing.assert_close(outputs[name], model(images), rtol=1e-5, atol=1e-5)
            expected = model.backbone(images)
            assert len(feats[name]) == len(expected) == 4
            for got, want in zip(feats[name], expected):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # The trunk runs blocks 0..4 once; after its M each task runs its own stream.
    seen = seen[:len(seen) // 2]  # the forward pass (extract_feat ran it again)
    calls = [sum(n for j, n in seen if j == i) for i in range(len(blocks))]
    starts = [c['start'] for c in SWIN_TASKS.values()]  # 1, 3, 4
    assert calls == [3 * ((i <= 4) + sum(s < i for s in starts)) for i in range(8)]
