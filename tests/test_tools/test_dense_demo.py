"""The dense demo (mmdtl.demo.dense, tools/misc/dense_demo.py) end to end on a
few scenes: every task through a real mmengine Runner (mmdet RetinaNet, mmseg
FCN) from the shipped demo ViT, metrics, the memory meters, reuse of finished
runs, the lr sweep's split and its write-back into a config."""
import json
import os.path as osp
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

import mmdtl.demo.dense as dense
from mmdtl.datasets.dense_scenes import write_dense_scenes
from mmdtl.demo.runs import CHECKPOINT, run_key
from mmdtl.testing import make_fashion_mnist_files

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope='module')
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp('dense')
    fashion = str(root / 'fashion')
    make_fashion_mnist_files(fashion)
    data_root = str(root / 'scenes')
    write_dense_scenes(data_root, num_train=16, num_val=8, num_test=8, fashion_source=fashion)
    return data_root


def test_every_task_trains_tests_and_is_measured(load_cli, scenes, tmp_path, capsys):
    cli = load_cli('tools/misc/dense_demo.py')
    work_dir = str(tmp_path / 'work')
    argv = ['--data-root', scenes, '--work-dir', work_dir,
            '--methods', 'frozen', 'dtl+sparse', 'full',
            '--cfg-options', 'train_cfg.max_epochs=1', 'train_dataloader.batch_size=4',
            'test_dataloader.batch_size=4']
    assert cli.main(argv) == 0
    records = {}
    for path in Path(work_dir).glob('seed0/*/result.json'):
        record = json.loads(path.read_text())
        records[(record['task'], record['method'])] = record
    assert len(records) == 6
    for task in ('detection', 'segmentation'):
        frozen, sparse, full = (records[(task, m)] for m in ('frozen', 'dtl+sparse', 'full'))
        for record in (frozen, sparse, full):
            assert set(record['metrics']) == set(dense.TASKS[task][1])
            assert all(0 <= v <= 100 for v in record['metrics'].values())
        # A frozen trunk keeps no backbone activations, DTL its suffix's only.
        assert frozen['activation_mb'] < sparse['activation_mb'] < full['activation_mb']
        assert frozen['trainable_backbone'] == 0
        assert 0 < sparse['trainable_backbone'] < full['trainable_backbone']
        # Neck and head train in every method.
        assert frozen['trainable_total'] > 0
        assert (sparse['trainable_total'] - sparse['trainable_backbone'] ==
                frozen['trainable_total'])
    table = (Path(work_dir) / 'dense_demo.md').read_text()
    assert '**detection**' in table and '**segmentation**' in table
    assert 'DTL+, sparse CSN' in table
    assert (Path(work_dir) / 'dense_demo.png').stat().st_size > 0
    assert len((Path(work_dir) / 'dense_demo.csv').read_text().splitlines()) == 1 + 6 * 2
    capsys.readouterr()
    # A second call reuses every finished run.
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.count('reused') == 6


def test_sweep_scores_on_val_and_never_on_test(scenes, tmp_path):
    for task in dense.TASKS:
        cfg = dense.load_run_config(dense.config_path('dtl+', task), 0, str(tmp_path), split='val',
                                   lr=0.5)
        dataset = cfg.test_dataloader.dataset
        paths = list(dataset.data_prefix.values()) + [dataset.get('ann_file', ''),
                                                      cfg.test_evaluator.get('ann_file', '')]
        assert not [p for p in paths if 'test' in p], paths
        assert any('val' in p for p in paths)
        assert 'val' not in str(cfg.train_dataloader.dataset)
        assert cfg.optim_wrapper.optimizer.lr == 0.5
        # The test protocol reads the test split.
        cfg = dense.load_run_config(dense.config_path('dtl+', task), 0, str(tmp_path))
        assert any('test' in p for p in cfg.test_dataloader.dataset.data_prefix.values())


def test_a_sweep_run_does_not_depend_on_the_lr_written_in_the_config(tmp_path):
    """--write changes the config's lr; the grid's runs must stay reusable."""
    text = Path(dense.config_path('dtl+', 'segmentation')).read_text()
    keys = []
    for written in ('0.001', '0.03'):
        config = tmp_path / f'{written}.py'
        config.write_text(dense.LR_BLOCK.sub(f'# chosen on train -> val by x\nlr = {written}\n',
                                            text).replace("'./_base_/", f"'{REPO}/configs/"
                                                          "dense-demo/_base_/"))
        cfg = dense.load_run_config(str(config), 0, str(tmp_path / 'w'), split='val', lr=3e-3)
        keys.append(run_key(cfg, 0, 'sha'))
    assert keys[0] == keys[1]


def test_best_lr_is_written_into_the_config(tmp_path):
    config = tmp_path / 'c.py'
    text = Path(dense.config_path('dtl+', 'segmentation')).read_text()
    config.write_text(text)
    scores = OrderedDict([(1e-3, 50.0), (3e-3, 61.5), (1e-2, 61.5)])
    best = dense.best_lr(scores)
    assert best == 3e-3  # ties go to the smaller lr
    dense.write_lr(str(config), scores, best, 'mIoU')
    written = config.read_text()
    assert 'lr = 0.003\n' in written and '1e-3' not in written
    assert '(val mIoU of the grid, seed 0: 0.001: 50.0, 0.003: 61.5, 0.01: 61.5)' in written
    assert written.replace(dense.LR_BLOCK.search(written).group(0), '') == \
        text.replace(dense.LR_BLOCK.search(text).group(0), '')
    config.write_text('lr = 1\n')
    with pytest.raises(SystemExit, match='expected one'):
        dense.write_lr(str(config), scores, best, 'mIoU')


def test_configs_differ_only_in_backbone_and_lr():
    """Every method of a task is the same detector/segmentor: neck, head,
    data and schedule are shared; only the backbone and lr differ."""
    from mmengine.config import Config
    for task in dense.TASKS:
        cfgs = {m: Config.fromfile(dense.config_path(m, task)) for m in dense.METHODS}
        reference = cfgs['full']
        for method, cfg in cfgs.items():
            for key in ('train_dataloader', 'test_dataloader', 'param_scheduler', 'train_cfg'):
                assert cfg[key] == reference[key], (task, method, key)
            model, ref_model = dict(cfg.model), dict(reference.model)
            model.pop('backbone'), ref_model.pop('backbone')
            assert model == ref_model, (task, method)
            assert cfg.model.backbone.init_cfg.checkpoint == CHECKPOINT
        assert cfgs['dtl+sparse'].model.backbone.csn.add_back_blocks == [3, 5]
        assert osp.isfile(REPO / CHECKPOINT)


# ------------------------------------------------------------------ inferencers
def random_model_checkpoint(cfg, scope: str, path: Path, meta: dict) -> None:
    """The config's model with random, non-zero weights everywhere (the side
    network's B starts at zero), saved as a training run saves it."""
    import importlib

    import torch
    from mmengine.registry import DefaultScope, init_default_scope

    registry = importlib.import_module(f'{scope}.registry').MODELS
    init_default_scope(scope)
    with DefaultScope.overwrite_default_scope(scope):
        torch.manual_seed(0)
        model = registry.build(cfg.model)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.05)
    torch.save({'state_dict': model.state_dict(), 'meta': {'dataset_meta': meta}}, path)


def pipeline_output(cfg, scope: str, model, path: str, drop=(), **extra):
    """The config's own test pipeline on an image file and the model's test
    step: what tools/test.py gives for the scene."""
    import importlib

    import torch
    from mmengine.dataset import Compose, pseudo_collate
    from mmengine.registry import DefaultScope

    registry = importlib.import_module(f'{scope}.registry').TRANSFORMS
    steps = [t for t in cfg.test_dataloader.dataset.pipeline if t['type'] not in drop]
    with DefaultScope.overwrite_default_scope(scope):
        data = Compose([registry.build(t) for t in steps])(dict(img_path=path, **extra))
        with torch.no_grad():
            return model.test_step(pseudo_collate([data]))[0]


def dense_demo_config(task: str):
    from mmengine.config import Config

    cfg = Config.fromfile(dense.config_path('dtl+', task))
    cfg.model.backbone.init_cfg = None  # the checkpoint written here holds every weight
    if task == 'detection':  # every box kept, so that a random model has some to compare
        cfg.merge_from_dict({'model.test_cfg.score_thr': 0.0, 'model.test_cfg.max_per_img': 20})
    return cfg


def test_grey_step_is_a_no_op_on_the_scenes(scenes):
    """The demo's own data reach the model exactly as before the ToGrayscale
    step was added: the grey loader gives one channel already."""
    import importlib

    import torch
    from mmengine.dataset import Compose
    from mmengine.registry import DefaultScope

    scene = str(sorted(Path(scenes, 'img_dir', 'test').iterdir())[0])
    for task, scope in (('detection', 'mmdet'), ('segmentation', 'mmseg')):
        pipeline = dense_demo_config(task).test_dataloader.dataset.pipeline
        assert pipeline[1]['type'] == 'mmpretrain.ToGrayscale'
        registry = importlib.import_module(f'{scope}.registry').TRANSFORMS
        outputs = []
        for steps in (pipeline, pipeline[:1] + pipeline[2:]):
            steps = [t for t in steps if t['type'] != 'LoadAnnotations' or scope == 'mmdet']
            with DefaultScope.overwrite_default_scope(scope):
                outputs.append(Compose([registry.build(t) for t in steps])(
                    dict(img_path=scene, img_id=0)))
        assert outputs[0]['inputs'].shape[0] == 1
        assert torch.equal(outputs[0]['inputs'], outputs[1]['inputs'])


def test_det_inferencer_on_a_colour_array(scenes, tmp_path):
    """mmdet's DetInferencer hands arrays on as given: a 3-channel (BGR)
    uint8 array reaches the 1-channel demo trunk through ToGrayscale, and a
    grey scene read in colour predicts exactly what the test pipeline does."""
    import cv2
    import torch
    from mmdet.apis import DetInferencer

    cfg = dense_demo_config('detection')
    checkpoint = tmp_path / 'model.pth'
    random_model_checkpoint(cfg, 'mmdet', checkpoint,
                            {'classes': tuple(f'c{i}' for i in range(cfg.num_classes))})
    inferencer = DetInferencer(cfg, weights=str(checkpoint), device='cpu', show_progress=False)
    scene = str(sorted(Path(scenes, 'img_dir', 'test').iterdir())[0])
    expected = pipeline_output(cfg, 'mmdet', inferencer.model, scene, img_id=0).pred_instances
    assert len(expected) > 0
    colour = cv2.imread(scene)  # B = G = R
    assert colour.shape == (112, 112, 3) and colour.dtype == np.uint8
    for inputs in (scene, colour):
        result = inferencer(inputs, return_datasamples=True)['predictions'][0]
        for key in ('bboxes', 'scores', 'labels'):
            torch.testing.assert_close(result.pred_instances[key], expected[key],
                                       rtol=0, atol=1e-5)
    # a colour image (channels differ) runs too
    rng = np.random.default_rng(0)
    result = inferencer(rng.integers(0, 256, (96, 80, 3), dtype=np.uint8),
                        return_datasamples=True)['predictions'][0]
    assert result.ori_shape == (96, 80) and len(result.pred_instances) > 0


def test_mmseg_inferencer_on_a_colour_array(scenes, tmp_path):
    """The same with mmseg's MMSegInferencer and the FCN config."""
    import cv2
    import torch
    from mmseg.apis import MMSegInferencer

    cfg = dense_demo_config('segmentation')
    classes = tuple(f'c{i}' for i in range(cfg.num_classes))
    checkpoint = tmp_path / 'model.pth'
    random_model_checkpoint(cfg, 'mmseg', checkpoint,
                            {'classes': classes, 'palette': [[i, i, i] for i in range(21)]})
    inferencer = MMSegInferencer(cfg, weights=str(checkpoint), device='cpu')
    inferencer.show_progress = False
    scene = str(sorted(Path(scenes, 'img_dir', 'test').iterdir())[0])
    expected = pipeline_output(cfg, 'mmseg', inferencer.model, scene,
                                  drop=('LoadAnnotations', ))
    for inputs in (scene, cv2.imread(scene)):
        result = inferencer(inputs, return_datasamples=True)
        assert result.pred_sem_seg.data.shape == (1, 112, 112)
        torch.testing.assert_close(result.seg_logits.data, expected.seg_logits.data,
                                   rtol=0, atol=1e-5)
        assert torch.equal(result.pred_sem_seg.data, expected.pred_sem_seg.data)
    rng = np.random.default_rng(0)
    result = inferencer(rng.integers(0, 256, (70, 84, 3), dtype=np.uint8),
                        return_datasamples=True)
    assert result.pred_sem_seg.data.shape == (1, 70, 84)
