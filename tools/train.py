"""Train a model from an OpenMMLab config (mmpretrain, mmdet or mmseg scope).

The config's ``default_scope`` (``mmseg`` from mmseg's base configs, ``mmdet``
from mmdet's, ``mmpretrain`` from ours) picks the registries; DTL backbones are
named ``mmpretrain.DTL...`` in any scope.

Examples::

    python tools/train.py configs/dtl/vit-demo_digits.py
    python tools/train.py configs/mmseg/upernet_dtl+-swin-b-p4-w7_8xb2-160k_ade20k-512x512.py
    python tools/train.py CONFIG --resume                 # latest in work_dir
    python tools/train.py CONFIG --resume PATH.pth --cfg-options train_cfg.max_epochs=200
    bash tools/dist_train.sh CONFIG 8 [ARGS]              # torchrun

A config with a top-level ``global_batch_size`` states the global batch of its
recipe: under N processes each takes ``global_batch_size / N`` images per step
(an error when it does not divide), so the steps per epoch and the learning
rate are those of one process. ``--auto-scale-lr`` keeps the per-process batch
instead and scales the learning rate linearly. Configs without the key keep
OpenMMLab's meaning of ``train_dataloader.batch_size`` (per process).
"""
import argparse
import copy
import datetime
import os
import os.path as osp
import subprocess
from typing import Optional, Tuple

import torch.distributed as torch_dist
from mmengine.config import Config, DictAction
from mmengine.device import is_cuda_available, is_mlu_available, is_musa_available, is_npu_available
from mmengine.hooks import Hook
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

import mmdtl  # noqa: F401  (registers DTL models, datasets, hooks)
from mmdtl.engine.hooks import NonFiniteLossError, NonFiniteLossHook, TrunkCheckHook
from mmdtl.utils import (
    TrunkMismatchError,
    TrunkNotLoadedError,
    UnreadableCheckpointError,
    UnsafeCheckpointError,
    UntrainedCheckpointError,
    register_safe_globals,
)
from mmdtl.utils.config_checks import check_backbone_reaches_neck

# Weights that do not fit the frozen trunk, a trunk never loaded, a refused or
# unreadable checkpoint, one to test without trained weights: the message says
# it all, no traceback.
CHECKPOINT_ERRORS = (TrunkMismatchError, TrunkNotLoadedError, UnreadableCheckpointError,
                     UnsafeCheckpointError, UntrainedCheckpointError)
# ... and a loss or weights that became NaN/inf (iteration, epoch, where).
TRAIN_ERRORS = CHECKPOINT_ERRORS + (NonFiniteLossError, )


class CfgOptionsAction(DictAction):
    """``DictAction`` whose parse errors name the offending option."""

    def __call__(self, parser, namespace, values, option_string=None):
        for kv in values or []:
            if '=' not in kv or not kv.split('=', 1)[0]:
                parser.error(f'{option_string}: expected KEY=VALUE, got {kv!r}')
        try:
            super().__call__(parser, namespace, values, option_string)
        except Exception as e:  # malformed lists/tuples in a value
            parser.error(f'{option_string}: cannot parse {values!r}: {e}')


def parse_args():
    parser = argparse.ArgumentParser(description='Train a model')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from the given checkpoint; without a path, resume from the latest '
        'checkpoint in the work directory')
    parser.add_argument(
        '--amp',
        action='store_true',
        help='enable automatic mixed precision training (GPU only: falls back to fp32 on '
        'a machine without CUDA)')
    parser.add_argument(
        '--no-validate', action='store_true', help='do not evaluate checkpoints during training')
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help='keep the per-process batch of the config and scale the learning rate linearly '
        'by the global batch (mmengine\'s auto_scale_lr, from global_batch_size or else '
        'auto_scale_lr.base_batch_size). Without it, a config with global_batch_size keeps '
        'that global batch (global_batch_size / processes per process) and its learning rate')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=CfgOptionsAction,
        help='override settings in the config, e.g. train_cfg.max_epochs=2 '
        'train_dataloader.batch_size=4; a list is key="[a,b]" or key=a,b')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    # torch.distributed.launch passes --local_rank, torchrun sets LOCAL_RANK.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def load_config(path: str, options: dict = None) -> Config:
    """Read a config and apply ``--cfg-options``, naming what is at fault."""
    if not osp.isfile(path):
        raise SystemExit(f'Config file not found: {path}')
    try:
        cfg = Config.fromfile(path)
    except Exception as e:
        raise SystemExit(f'Cannot read config {path}: {type(e).__name__}: {e}') from e
    if options:
        try:
            cfg.merge_from_dict(options)
        except Exception as e:
            # Find the option at fault (merging alone) for the message.
            culprit = next((f'{k}={v!r}' for k, v in options.items()
                            if not _merges(copy.deepcopy(cfg), k, v)), 'one of them')
            raise SystemExit(f'Invalid --cfg-options {culprit} for config {path}: '
                             f'{type(e).__name__}: {e}') from e
    return cfg


def _merges(cfg: Config, key: str, value) -> bool:
    try:
        cfg.merge_from_dict({key: value})
        return True
    except Exception:
        return False


def _amp_capable() -> bool:
    """Whether AmpOptimWrapper can run here (the devices mmengine accepts)."""
    return (is_cuda_available() or is_npu_available() or is_mlu_available()
            or is_musa_available())


def _type_name(cfg_type) -> str:
    name = cfg_type if isinstance(cfg_type, str) else getattr(cfg_type, '__name__', '')
    return name.split('.')[-1]


def setup_eval_fp16(cfg: Config, notes: list) -> None:
    """Evaluate in fp32 where there is no GPU.

    The released recipes evaluate under fp16 autocast (``val_cfg`` /
    ``test_cfg`` with ``fp16=True``); mmengine's autocast on CPU would run
    bfloat16 instead, so without a GPU the loops run in fp32.
    """
    if _amp_capable():
        return
    for key in ('val_cfg', 'test_cfg'):
        loop_cfg = cfg.get(key)
        if loop_cfg and loop_cfg.get('fp16'):
            loop_cfg['fp16'] = False
            notes.append(f'{key}.fp16 (fp16 autocast evaluation) needs a GPU; no CUDA device '
                         'is available: evaluating in fp32.')


def setup_amp(cfg: Config, amp: bool, notes: list) -> None:
    """Turn ``--amp`` on, or fall back to fp32 where there is no GPU (training
    and evaluation)."""
    setup_eval_fp16(cfg, notes)
    optim_wrapper = cfg.get('optim_wrapper')
    if optim_wrapper is None:
        if amp:
            raise SystemExit('--amp needs an optim_wrapper in the config.')
        return
    wrapper_type = _type_name(optim_wrapper.get('type', 'OptimWrapper'))
    if amp and wrapper_type == 'OptimWrapper':
        optim_wrapper.type = 'AmpOptimWrapper'
        optim_wrapper.setdefault('loss_scale', 'dynamic')
        wrapper_type = 'AmpOptimWrapper'
    elif amp and wrapper_type != 'AmpOptimWrapper':
        raise SystemExit(f'--amp: optim_wrapper type {wrapper_type} is neither OptimWrapper '
                         'nor AmpOptimWrapper; set the AMP wrapper in the config instead.')
    if wrapper_type == 'AmpOptimWrapper' and not _amp_capable():
        # AMP is a GPU recipe; on CPU the same recipe runs in fp32.
        optim_wrapper.type = 'OptimWrapper'
        for key in ('loss_scale', 'dtype', 'use_fsdp'):
            optim_wrapper.pop(key, None)
        notes.append('AMP requested (AmpOptimWrapper) but no CUDA device is available: '
                     'falling back to OptimWrapper (fp32 training).')


def setup_cpu_distributed(cfg: Config, launcher: str, notes: list) -> None:
    """Distributed training without CUDA: gloo, and no GPU device ids.

    mmengine's ``init_dist`` always calls ``torch.cuda.set_device``, which
    fails on a machine without CUDA, so the process group is initialised
    here (the Runner then finds it initialised and keeps it); DDP wraps a CPU
    module only with ``device_ids=None`` and refuses SyncBatchNorm (mmseg's
    heads), which therefore becomes per-process BatchNorm.
    """
    sync_bn = replace_sync_bn(cfg.get('model'))
    if cfg.pop('sync_bn', None) is not None:
        sync_bn.append('sync_bn')
    if sync_bn:
        notes.append(f'No CUDA device: SyncBatchNorm only runs on GPUs; {", ".join(sync_bn)} '
                     "replaced by per-process 'BN' (statistics of each process's batch).")
    env_cfg = cfg.setdefault('env_cfg', {})
    dist_cfg = env_cfg.setdefault('dist_cfg', {})
    if dist_cfg.get('backend', 'nccl') != 'gloo':
        notes.append(f'No CUDA device: distributed backend {dist_cfg.get("backend", "nccl")!r} '
                     "replaced by 'gloo'.")
        dist_cfg['backend'] = 'gloo'
    wrapper = cfg.get('model_wrapper_cfg')
    if wrapper is None:
        cfg.model_wrapper_cfg = dict(
            type='MMDistributedDataParallel',
            device_ids=None,
            broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
    else:
        wrapper.setdefault('device_ids', None)

    if torch_dist.is_available() and torch_dist.is_initialized():
        return
    kwargs = {k: v for k, v in dist_cfg.items() if k not in ('backend', 'port')}
    if kwargs.get('timeout') is not None:
        kwargs['timeout'] = datetime.timedelta(seconds=kwargs['timeout'])
    if launcher == 'slurm':
        # As mmengine's slurm init, minus the CUDA device.
        os.environ.setdefault('MASTER_PORT', str(dist_cfg.get('port', 29500)))
        if 'MASTER_ADDR' not in os.environ:
            os.environ['MASTER_ADDR'] = subprocess.getoutput(
                f'scontrol show hostname {os.environ["SLURM_NODELIST"]} | head -n1')
        os.environ['WORLD_SIZE'] = os.environ['SLURM_NTASKS']
        os.environ['RANK'] = os.environ['SLURM_PROCID']
        os.environ['LOCAL_RANK'] = os.environ.get('SLURM_LOCALID', '0')
    elif launcher == 'mpi':
        os.environ.setdefault('MASTER_PORT', str(dist_cfg.get('port', 29500)))
        if 'MASTER_ADDR' not in os.environ:
            raise SystemExit('--launcher mpi: set MASTER_ADDR to the address of rank 0.')
        os.environ['WORLD_SIZE'] = os.environ['OMPI_COMM_WORLD_SIZE']
        os.environ['RANK'] = os.environ['OMPI_COMM_WORLD_RANK']
        os.environ['LOCAL_RANK'] = os.environ.get('OMPI_COMM_WORLD_LOCAL_RANK', '0')
    torch_dist.init_process_group(
        backend='gloo',
        rank=int(os.environ['RANK']),
        world_size=int(os.environ['WORLD_SIZE']),
        **kwargs)


def replace_sync_bn(node, path: str = 'model') -> list:
    """Turn every ``norm_cfg`` of type ``SyncBN``/``MMSyncBN`` under ``node``
    into ``BN`` in place; return where (config paths)."""
    found = []
    if isinstance(node, dict):
        norm_type = node.get('type')
        if isinstance(norm_type, str) and norm_type.split('.')[-1] in ('SyncBN', 'MMSyncBN'):
            node['type'] = 'BN'
            found.append(path)
        for key, value in node.items():
            found += replace_sync_bn(value, f'{path}.{key}')
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            found += replace_sync_bn(value, f'{path}.{index}')
    return found


# Environment variables that hold the number of processes, per launcher.
WORLD_SIZE_ENV = dict(pytorch='WORLD_SIZE', slurm='SLURM_NTASKS', mpi='OMPI_COMM_WORLD_SIZE')


def launcher_world_size(launcher: str) -> int:
    """The number of training processes, known before the process group is."""
    key = WORLD_SIZE_ENV.get(launcher)
    if key is None:
        return 1
    if not os.environ.get(key, '').isdigit():
        raise SystemExit(f'--launcher {launcher}: {key} is not set; start the processes with '
                         'tools/dist_train.sh, tools/slurm_train.sh or mpirun.')
    return int(os.environ[key])


def setup_batch(cfg: Config, config_path: str, options: dict, auto_scale_lr: bool,
                world_size: int, notes: list) -> Optional[str]:
    """Set the per-process batch of ``world_size`` processes; describe it.

    Where the config sets ``global_batch_size`` that global batch is part of
    the recipe and is kept: each process takes ``global_batch_size /
    world_size``. Two explicit requests keep the per-process batch instead:
    ``--auto-scale-lr`` (mmengine then scales the learning rate by the global
    batch over ``global_batch_size``) and ``train_dataloader.batch_size``
    given in ``--cfg-options`` (OpenMMLab's per-process meaning). Without
    ``global_batch_size``, ``train_dataloader.batch_size`` is per process, as
    in OpenMMLab.

    Returns:
        str | None: the line logged at start (None without a train loader).
    """
    loader = cfg.get('train_dataloader')
    if not loader or loader.get('batch_size') is None:
        return None
    recipe = cfg.get('global_batch_size')
    per_process = loader.batch_size
    if recipe is not None and (not isinstance(recipe, int) or recipe < 1):
        raise SystemExit(f'{config_path}: global_batch_size must be a positive integer, '
                         f'got {recipe!r}.')
    cli_batch = 'train_dataloader.batch_size' in options
    if recipe is None:
        how = 'train_dataloader.batch_size per process (the config has no global_batch_size)'
    elif auto_scale_lr:
        # the recipe's lr is that of its global batch: scale from there
        cfg.auto_scale_lr = dict(cfg.get('auto_scale_lr') or {}, base_batch_size=recipe,
                                 enable=True)
        how = '--auto-scale-lr: the per-process batch kept, the lr scaled'
    elif cli_batch and 'global_batch_size' not in options:
        how = 'train_dataloader.batch_size per process, from --cfg-options'
    else:
        if cli_batch and per_process * world_size != recipe:
            raise SystemExit(
                f'{config_path}: --cfg-options train_dataloader.batch_size={per_process} and '
                f'global_batch_size={recipe} disagree on {world_size} process(es) '
                f'({world_size} x {per_process} != {recipe}); give only one of them.')
        if recipe % world_size:
            raise SystemExit(
                f'{config_path}: the global batch of the recipe (global_batch_size={recipe}) '
                f'does not divide into {world_size} processes. Run on a number of processes '
                f'that divides {recipe}, set another global batch with --cfg-options '
                'global_batch_size=..., or keep the per-process batch and scale the learning '
                'rate with --auto-scale-lr.')
        per_process = loader.batch_size = recipe // world_size
        how = 'global_batch_size of the config kept'
    total = per_process * world_size
    if recipe is not None and total != recipe:
        notes.append(f'The global batch is {total}, not the recipe\'s global_batch_size='
                     f'{recipe} of {config_path} ({how}).')
    return (f'Batch: global {total} = {world_size} process(es) x {per_process} per process '
            f'({how})')


class LogBatchAndLrHook(Hook):
    """Log the batch line and the learning rate the optimizer starts from.

    ``before_run`` comes after mmengine's ``auto_scale_lr`` and after any
    runner that sets the learning rate, so the logged lr is the one used.
    """

    priority = 'VERY_HIGH'

    def __init__(self, batch_line: str):
        self.batch_line = batch_line

    def before_run(self, runner) -> None:
        groups = runner.optim_wrapper.param_groups
        # the lr of what trains (a group of frozen parameters changes nothing)
        groups = [g for g in groups if any(p.requires_grad for p in g['params'])] or groups
        lrs = sorted({group.get('initial_lr', group['lr']) for group in groups})
        lr = ', '.join(f'{lr:.6g}' for lr in lrs)
        scaled = (runner.auto_scale_lr or {}).get('enable', False)
        runner.logger.info(f'{self.batch_line}; lr {lr}'
                           f'{" (scaled by --auto-scale-lr)" if scaled else ""}')


def merge_args(cfg: Config, args, notes: list) -> Tuple[Config, Optional[str]]:
    """Apply the command line to the config; also return the batch line to log."""
    cfg.launcher = args.launcher
    # work_dir priority: CLI > config > ./work_dirs/<config name>
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])

    setup_amp(cfg, args.amp, notes)

    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        if '://' not in args.resume and not osp.isfile(args.resume):
            raise SystemExit(f'--resume: checkpoint not found: {args.resume}')
        cfg.resume = True
        cfg.load_from = args.resume

    if args.no_validate:
        cfg.val_cfg = None
        cfg.val_dataloader = None
        cfg.val_evaluator = None

    if args.auto_scale_lr:
        if (cfg.get('global_batch_size') is None
                and 'base_batch_size' not in (cfg.get('auto_scale_lr') or {})):
            raise SystemExit('--auto-scale-lr needs the batch the lr is set for: '
                             '`global_batch_size = ...` or `auto_scale_lr = '
                             f'dict(base_batch_size=...)` in {args.config}.')
        cfg.auto_scale_lr = dict(cfg.get('auto_scale_lr') or {}, enable=True)
    batch_line = setup_batch(cfg, args.config, args.cfg_options or {}, args.auto_scale_lr,
                             launcher_world_size(args.launcher), notes)

    if args.launcher != 'none' and not _amp_capable():
        setup_cpu_distributed(cfg, args.launcher, notes)
    return cfg, batch_line


def main():
    args = parse_args()
    # Weights-only loading that can resume mmengine checkpoints (explicit,
    # as mmdet/mmseg configs may not import mmdtl).
    register_safe_globals()
    cfg = load_config(args.config, args.cfg_options)
    notes = []
    cfg, batch_line = merge_args(cfg, args, notes)
    try:  # before any data or weights are read
        check_backbone_reaches_neck(cfg)
    except ValueError as e:
        raise SystemExit(str(e)) from e

    # 'runner_type' lets a config pick a custom runner (e.g. FlexibleRunner).
    if 'runner_type' not in cfg:
        runner = Runner.from_cfg(cfg)
    else:
        runner = RUNNERS.build(cfg)
    for note in notes:  # logged once the runner's log file exists
        runner.logger.warning(note)
    if batch_line is not None:
        runner.register_hook(LogBatchAndLrHook(batch_line))
    if not any(isinstance(hook, TrunkCheckHook) for hook in runner.hooks):
        runner.register_hook(TrunkCheckHook())  # configs not based on ours (mmdet, mmseg)
    # Configs not based on ours stop at a NaN loss too; an explicit
    # `default_hooks.nonfinite_loss=None` keeps mmengine's behaviour.
    if not any(isinstance(hook, NonFiniteLossHook) for hook in runner.hooks) and \
            'nonfinite_loss' not in (cfg.get('default_hooks') or {}):
        runner.register_hook(NonFiniteLossHook())
    try:
        runner.train()
    except TRAIN_ERRORS as e:
        raise SystemExit(f'{type(e).__name__}: {e}') from None
    if torch_dist.is_available() and torch_dist.is_initialized():
        # Every rank done first: a gloo rank torn down while another still
        # talks to it aborts at exit ("terminate called without an active
        # exception", seen once in CI with 2 CPU processes).
        torch_dist.barrier()
        torch_dist.destroy_process_group()


if __name__ == '__main__':
    main()
