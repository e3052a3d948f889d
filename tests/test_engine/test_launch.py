"""The launch policy of mmdtl.engine.launch on real configs: what the tools
and mmdtl.apis decide before the Runner is built."""
from pathlib import Path

import pytest
from mmengine.config import Config

import mmdtl  # noqa: F401
from mmdtl.engine.launch import (
    LaunchError,
    launcher_world_size,
    load_config,
    one_line_errors,
    prepare_test_config,
    prepare_train_config,
    setup_amp,
    setup_batch,
    setup_cpu_distributed,
    setup_eval_fp16,
)
from mmdtl.utils import TrunkMismatchError

REPO = Path(__file__).resolve().parents[2]
RECIPE = 'configs/dtl/vit-b_vtab-cifar.py'
DEMO = 'configs/dtl/vit-demo_digits.py'
SEG = 'configs/mmseg/upernet_dtl+-swin-b-p4-w7_8xb2-160k_ade20k-512x512.py'


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def test_load_config_names_the_file_and_the_option(tmp_path):
    with pytest.raises(LaunchError, match='^Config file not found: configs/dtl/none.py$'):
        load_config('configs/dtl/none.py')
    broken = tmp_path / 'broken.py'
    broken.write_text('model = dict(\n')
    with pytest.raises(LaunchError, match=f'^Cannot read config {broken}: '):
        load_config(str(broken))
    with pytest.raises(LaunchError, match=r"^Invalid --cfg-options model.head.num_classes.x=1 "
                       f'for config {RECIPE}: '):
        load_config(RECIPE, {'train_cfg.max_epochs': 2, 'model.head.num_classes.x': 1})

    cfg = load_config(RECIPE, {'train_cfg.max_epochs': 2})
    assert cfg.train_cfg.max_epochs == 2 and cfg.global_batch_size == 32
    # A Config given as such is copied: the caller's stays as it was.
    again = load_config(cfg, {'train_cfg.max_epochs': 7})
    assert again.train_cfg.max_epochs == 7 and cfg.train_cfg.max_epochs == 2


def batch(cfg_dict, world_size, options=None, auto_scale_lr=False):
    cfg, notes = Config(cfg_dict), []
    cfg.merge_from_dict(options or {})
    line = setup_batch(cfg, 'c.py', options or {}, auto_scale_lr, world_size, notes)
    return cfg, line, notes


def test_global_batch_splits_over_processes_or_says_why_not():
    recipe = dict(global_batch_size=32, train_dataloader=dict(batch_size=32))
    for world_size, per_process in ((1, 32), (2, 16), (4, 8), (32, 1)):
        cfg, line, notes = batch(recipe, world_size)
        assert cfg.train_dataloader.batch_size == per_process and notes == []
        assert line == (f'Batch: global 32 = {world_size} process(es) x {per_process} per '
                        'process (global_batch_size of the config kept)')
    with pytest.raises(LaunchError) as info:
        batch(recipe, 3)
    assert str(info.value) == (
        'c.py: the global batch of the recipe (global_batch_size=32) does not divide into 3 '
        'processes. Run on a number of processes that divides 32, set another global batch '
        'with --cfg-options global_batch_size=..., or keep the per-process batch and scale '
        'the learning rate with --auto-scale-lr.')
    with pytest.raises(LaunchError, match=r'\(3 x 8 != 32\); give only one of them'):
        batch(recipe, 3, {'train_dataloader.batch_size': 8, 'global_batch_size': 32})
    with pytest.raises(LaunchError, match="global_batch_size must be a positive integer, "
                       "got 'x'"):
        batch(dict(recipe, global_batch_size='x'), 1)
    # No train loader (a test-only config): nothing to say.
    assert batch(dict(global_batch_size=32), 2)[1] is None


def test_launchers_and_their_process_counts(monkeypatch):
    assert launcher_world_size('none') == 1
    monkeypatch.setenv('OMPI_COMM_WORLD_SIZE', '3')
    assert launcher_world_size('mpi') == 3
    monkeypatch.delenv('SLURM_NTASKS', raising=False)
    with pytest.raises(LaunchError, match='^--launcher slurm: SLURM_NTASKS is not set'):
        launcher_world_size('slurm')
    with pytest.raises(LaunchError, match="launcher must be one of none, pytorch, slurm, mpi, "
                       "got 'torchrun'"):
        launcher_world_size('torchrun')


def test_amp_and_eval_fp16_on_the_released_recipe():
    # The recipe trains with AMP and evaluates under fp16 on a GPU ...
    cfg, notes = load_config(RECIPE), []
    setup_amp(cfg, False, notes, gpu=True)
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    assert cfg.test_cfg.fp16 is True and notes == []
    # ... and in fp32 without one, saying so.
    cfg, notes = load_config(RECIPE), []
    setup_amp(cfg, False, notes, gpu=False)
    assert cfg.optim_wrapper.type == 'OptimWrapper' and 'loss_scale' not in cfg.optim_wrapper
    assert cfg.test_cfg.fp16 is False
    assert cfg.val_cfg.fp16 is False
    assert [n.split(' ')[0] for n in notes] == ['val_cfg.fp16', 'test_cfg.fp16', 'AMP']
    assert notes[1] == ('test_cfg.fp16 (fp16 autocast evaluation) needs a GPU; no CUDA device '
                        'is available: evaluating in fp32.')
    assert notes[2] == ('AMP requested (AmpOptimWrapper) but no CUDA device is available: '
                        'falling back to OptimWrapper (fp32 training).')
    # Evaluation alone (tools/test.py).
    cfg, notes = load_config(RECIPE), []
    setup_eval_fp16(cfg, notes, gpu=False)
    assert cfg.test_cfg.fp16 is cfg.val_cfg.fp16 is False and len(notes) == 2
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    # --amp on a config that trains in fp32 (the demo): AMP on a GPU only.
    cfg = load_config(DEMO)
    assert cfg.optim_wrapper.type == 'OptimWrapper'
    setup_amp(cfg, True, [], gpu=True)
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    assert cfg.optim_wrapper.loss_scale == 'dynamic'
    cfg, notes = load_config(DEMO), []
    setup_amp(cfg, True, notes, gpu=False)
    assert cfg.optim_wrapper.type == 'OptimWrapper' and 'loss_scale' not in cfg.optim_wrapper
    assert 'falling back to OptimWrapper (fp32 training)' in notes[-1]


def test_amp_refuses_what_it_cannot_turn_on():
    with pytest.raises(LaunchError, match='^--amp needs an optim_wrapper in the config.$'):
        setup_amp(Config(dict()), True, [], gpu=True)
    cfg = Config(dict(optim_wrapper=dict(type='DeepSpeedOptimWrapper')))
    with pytest.raises(LaunchError, match='^--amp: optim_wrapper type DeepSpeedOptimWrapper '
                       'is neither OptimWrapper nor AmpOptimWrapper'):
        setup_amp(cfg, True, [], gpu=True)


def test_cpu_distributed_config_on_an_mmseg_config():
    cfg, notes = load_config(SEG), []
    setup_cpu_distributed(cfg, 'pytorch', notes, init_process_group=False)
    assert cfg.env_cfg.dist_cfg.backend == 'gloo'
    assert cfg.model_wrapper_cfg.type == 'MMDistributedDataParallel'
    assert cfg.model_wrapper_cfg.device_ids is None
    assert cfg.model.decode_head.norm_cfg.type == 'BN'
    assert notes == [
        'No CUDA device: SyncBatchNorm only runs on GPUs; model.decode_head.norm_cfg, '
        "model.auxiliary_head.norm_cfg replaced by per-process 'BN' (statistics of each "
        "process's batch).",
        "No CUDA device: distributed backend 'nccl' replaced by 'gloo'."]
    # A wrapper the config sets keeps its settings and gets no device ids.
    cfg = Config(dict(model_wrapper_cfg=dict(type='MMDistributedDataParallel',
                                             find_unused_parameters=True)))
    setup_cpu_distributed(cfg, 'pytorch', [], init_process_group=False)
    assert cfg.model_wrapper_cfg.device_ids is None
    assert cfg.model_wrapper_cfg.find_unused_parameters is True


def test_prepare_train_config(tmp_path):
    cfg, notes = load_config(RECIPE), []
    line = prepare_train_config(cfg, RECIPE, notes)
    assert cfg.work_dir == './work_dirs/vit-b_vtab-cifar' and cfg.launcher == 'none'
    assert line.startswith('Batch: global 32 = 1 process(es) x 32 per process')
    assert cfg.get('resume', False) is False

    ckpt = tmp_path / 'epoch_3.pth'
    ckpt.write_bytes(b'')
    cfg = load_config(RECIPE)
    prepare_train_config(cfg, RECIPE, [], work_dir=tmp_path, resume=str(ckpt),
                         no_validate=True)
    assert cfg.work_dir == str(tmp_path) and cfg.resume is True and cfg.load_from == str(ckpt)
    assert cfg.val_cfg is None and cfg.val_dataloader is None and cfg.val_evaluator is None
    cfg = load_config(RECIPE)
    prepare_train_config(cfg, RECIPE, [], resume=True)  # the latest of work_dir
    assert cfg.resume is True and cfg.load_from is None
    with pytest.raises(LaunchError, match=f'^--resume: checkpoint not found: {tmp_path}/x.pth'):
        prepare_train_config(load_config(RECIPE), RECIPE, [], resume=str(tmp_path / 'x.pth'))

    # --auto-scale-lr scales from the recipe's global batch ...
    cfg = load_config(RECIPE, {'train_dataloader.batch_size': 16})
    prepare_train_config(cfg, RECIPE, [], auto_scale_lr=True,
                         cfg_options={'train_dataloader.batch_size': 16})
    assert cfg.auto_scale_lr == dict(base_batch_size=32, enable=True)
    # ... and needs to know it.
    cfg = Config(dict(train_dataloader=dict(batch_size=4)))
    with pytest.raises(LaunchError, match='^--auto-scale-lr needs the batch the lr is set for'):
        prepare_train_config(cfg, 'c.py', [], auto_scale_lr=True)


def test_prepare_test_config(tmp_path):
    ckpt = tmp_path / 'epoch_3.pth'
    ckpt.write_bytes(b'')
    with pytest.raises(LaunchError, match=f'^Checkpoint not found: {tmp_path}/none.pth$'):
        prepare_test_config(load_config(RECIPE), RECIPE, tmp_path / 'none.pth', [])
    cfg, notes = load_config(RECIPE), []
    prepare_test_config(cfg, RECIPE, ckpt, notes, work_dir=tmp_path, show_dir=tmp_path / 'v',
                        launcher='none')
    assert cfg.load_from == str(ckpt) and cfg.resume is False and cfg.work_dir == str(tmp_path)
    # mmpretrain's VisualizationHook takes enable/out_dir
    assert cfg.default_hooks.visualization.enable is True
    assert cfg.default_hooks.visualization.out_dir == str(tmp_path / 'v')
    cfg = Config(dict(default_hooks=dict()))
    with pytest.raises(LaunchError, match='^--show-dir: c.py has no default_hooks.visualization'):
        prepare_test_config(cfg, 'c.py', ckpt, [], show_dir='v')


def test_one_line_errors():
    with pytest.raises(SystemExit) as info, one_line_errors():
        raise LaunchError('c.py: what to change')
    assert info.value.code == 'c.py: what to change'
    with pytest.raises(SystemExit) as info, one_line_errors():
        raise TrunkMismatchError('The checkpoint x.pth does not fit')
    assert info.value.code == 'TrunkMismatchError: The checkpoint x.pth does not fit'
    # Anything else keeps its traceback.
    with pytest.raises(KeyError), one_line_errors():
        raise KeyError('bug')
