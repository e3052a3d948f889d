"""Launch policy: how a config becomes a training or test run.

What ``tools/train.py``, ``tools/test.py`` and :mod:`mmdtl.apis` decide
before mmengine's ``Runner`` is built, as functions of a
:class:`~mmengine.config.Config` (each changes the config in place and
appends what it changed to a list of notes, logged once the run's log file
exists):

- :func:`load_config` reads a config and applies ``cfg_options``;
- :func:`setup_batch` keeps the recipe's global batch on any number of
  processes (``global_batch_size / processes`` per process);
- :func:`setup_amp` / :func:`setup_eval_fp16` turn AMP on, or fall back to
  fp32 where there is no GPU;
- :func:`setup_cpu_distributed` runs distributed jobs without CUDA (gloo,
  SyncBN as BN);
- :func:`prepare_train_config` / :func:`prepare_test_config` apply the
  arguments of a training / test job in the order the tools do;
- :func:`build_runner` builds the Runner and adds mmdtl's checks to configs
  not based on ours; :func:`finish_distributed` ends a process group.

A request that cannot run as asked raises :class:`LaunchError`, whose
message names the config or option at fault; the tools print it as one line
(:func:`one_line_errors`). Messages name the command-line flags
(``--amp``, ``--cfg-options``); the Python API's keyword arguments carry the
same names.
"""
import argparse
import copy
import datetime
import inspect
import os
import os.path as osp
import subprocess
from contextlib import contextmanager
from typing import List, Optional, Union

import torch.distributed as torch_dist
from mmengine.config import Config, DictAction
from mmengine.device import is_cuda_available, is_mlu_available, is_musa_available, is_npu_available
from mmengine.hooks import Hook
from mmengine.registry import HOOKS, RUNNERS
from mmengine.runner import Runner

from mmdtl.utils import (
    TrunkMismatchError,
    TrunkNotLoadedError,
    UnreadableCheckpointError,
    UnsafeCheckpointError,
    UntrainedCheckpointError,
)
from mmdtl.utils.config_checks import check_backbone_reaches_neck

from .hooks import NonFiniteLossError, NonFiniteLossHook, TrunkCheckHook


class LaunchError(ValueError):
    """A config or a job argument that cannot run as asked; the message says
    which and what to do."""


# Weights that do not fit the frozen trunk, a trunk never loaded, a refused or
# unreadable checkpoint, one to test without trained weights: the message says
# it all, no traceback.
CHECKPOINT_ERRORS = (TrunkMismatchError, TrunkNotLoadedError, UnreadableCheckpointError,
                     UnsafeCheckpointError, UntrainedCheckpointError)
# ... and a loss or weights that became NaN/inf (iteration, epoch, where).
TRAIN_ERRORS = CHECKPOINT_ERRORS + (NonFiniteLossError, )

LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi')
# Environment variables that hold the number of processes, per launcher.
WORLD_SIZE_ENV = dict(pytorch='WORLD_SIZE', slurm='SLURM_NTASKS', mpi='OMPI_COMM_WORLD_SIZE')


@contextmanager
def one_line_errors(errors: tuple = TRAIN_ERRORS):
    """Turn a :class:`LaunchError` or one of ``errors`` into ``SystemExit``
    with a one-line message (a script's way to stop; no traceback)."""
    try:
        yield
    except LaunchError as e:
        raise SystemExit(str(e)) from None
    except errors as e:
        raise SystemExit(f'{type(e).__name__}: {e}') from None


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


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    """``--launcher`` and ``--local_rank``, as both tools take them."""
    parser.add_argument('--launcher', choices=LAUNCHERS, default='none', help='job launcher')
    # torch.distributed.launch passes --local_rank, torchrun sets LOCAL_RANK.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def config_name(config: Union[str, Config]) -> str:
    """How messages name a config: its path (a Config's file, if any)."""
    if isinstance(config, Config):
        return config.filename or '<Config>'
    return str(config)


def load_config(config: Union[str, Config], options: Optional[dict] = None) -> Config:
    """Read a config and apply ``cfg_options``, naming what is at fault.

    Args:
        config (str | Config): A config file, or a config already read (a
            copy is changed, not it).
        options (dict, optional): ``{'key.sub': value}`` merged into it, as
            ``--cfg-options key.sub=value`` does.

    Returns:
        Config: the config to run.
    """
    path = config_name(config)
    if isinstance(config, Config):
        cfg = copy.deepcopy(config)
    else:
        if not osp.isfile(path):
            raise LaunchError(f'Config file not found: {path}')
        try:
            cfg = Config.fromfile(path)
        except Exception as e:
            raise LaunchError(f'Cannot read config {path}: {type(e).__name__}: {e}') from e
    if options:
        try:
            cfg.merge_from_dict(options)
        except Exception as e:
            # Find the option at fault (merging alone) for the message.
            culprit = next((f'{k}={v!r}' for k, v in options.items()
                            if not _merges(copy.deepcopy(cfg), k, v)), 'one of them')
            raise LaunchError(f'Invalid --cfg-options {culprit} for config {path}: '
                              f'{type(e).__name__}: {e}') from e
    return cfg


def _merges(cfg: Config, key: str, value) -> bool:
    try:
        cfg.merge_from_dict({key: value})
        return True
    except Exception:
        return False


def amp_capable() -> bool:
    """Whether AmpOptimWrapper can run here (the devices mmengine accepts)."""
    return (is_cuda_available() or is_npu_available() or is_mlu_available()
            or is_musa_available())


def _type_name(cfg_type) -> str:
    name = cfg_type if isinstance(cfg_type, str) else getattr(cfg_type, '__name__', '')
    return name.split('.')[-1]


def setup_eval_fp16(cfg: Config, notes: list, gpu: Optional[bool] = None) -> None:
    """Evaluate in fp32 where there is no GPU.

    The released recipes evaluate under fp16 autocast (``val_cfg`` /
    ``test_cfg`` with ``fp16=True``); mmengine's autocast on CPU would run
    bfloat16 instead, so without a GPU the loops run in fp32.

    Args:
        cfg (Config): Changed in place.
        notes (list): Gets one line per loop changed.
        gpu (bool, optional): Whether AMP can run here; None asks
            :func:`amp_capable`.
    """
    if amp_capable() if gpu is None else gpu:
        return
    for key in ('val_cfg', 'test_cfg'):
        loop_cfg = cfg.get(key)
        if loop_cfg and loop_cfg.get('fp16'):
            loop_cfg['fp16'] = False
            notes.append(f'{key}.fp16 (fp16 autocast evaluation) needs a GPU; no CUDA device '
                         'is available: evaluating in fp32.')


def setup_amp(cfg: Config, amp: bool, notes: list, gpu: Optional[bool] = None) -> None:
    """Turn AMP on (``amp=True``), or fall back to fp32 where there is no GPU
    (training and evaluation).

    Args:
        cfg (Config): Changed in place.
        amp (bool): Train with ``AmpOptimWrapper`` (``--amp``).
        notes (list): Gets one line per fallback.
        gpu (bool, optional): Whether AMP can run here; None asks
            :func:`amp_capable`.
    """
    gpu = amp_capable() if gpu is None else gpu
    setup_eval_fp16(cfg, notes, gpu=gpu)
    optim_wrapper = cfg.get('optim_wrapper')
    if optim_wrapper is None:
        if amp:
            raise LaunchError('--amp needs an optim_wrapper in the config.')
        return
    wrapper_type = _type_name(optim_wrapper.get('type', 'OptimWrapper'))
    if amp and wrapper_type == 'OptimWrapper':
        optim_wrapper.type = 'AmpOptimWrapper'
        optim_wrapper.setdefault('loss_scale', 'dynamic')
        wrapper_type = 'AmpOptimWrapper'
    elif amp and wrapper_type != 'AmpOptimWrapper':
        raise LaunchError(f'--amp: optim_wrapper type {wrapper_type} is neither OptimWrapper '
                          'nor AmpOptimWrapper; set the AMP wrapper in the config instead.')
    if wrapper_type == 'AmpOptimWrapper' and not gpu:
        # AMP is a GPU recipe; on CPU the same recipe runs in fp32.
        optim_wrapper.type = 'OptimWrapper'
        for key in ('loss_scale', 'dtype', 'use_fsdp'):
            optim_wrapper.pop(key, None)
        notes.append('AMP requested (AmpOptimWrapper) but no CUDA device is available: '
                     'falling back to OptimWrapper (fp32 training).')


def replace_sync_bn(node, path: str = 'model') -> List[str]:
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


def setup_cpu_distributed(cfg: Config, launcher: str, notes: list,
                          init_process_group: bool = True) -> None:
    """Distributed training without CUDA: gloo, and no GPU device ids.

    mmengine's ``init_dist`` always calls ``torch.cuda.set_device``, which
    fails on a machine without CUDA, so the process group is initialised
    here (the Runner then finds it initialised and keeps it); DDP wraps a CPU
    module only with ``device_ids=None`` and refuses SyncBatchNorm (mmseg's
    heads), which therefore becomes per-process BatchNorm.

    Args:
        cfg (Config): Changed in place.
        launcher (str): ``'pytorch'``, ``'slurm'`` or ``'mpi'``.
        notes (list): Gets one line per change.
        init_process_group (bool): Also start the gloo process group from
            the launcher's environment (unless one exists). Defaults to True.
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

    if not init_process_group or (torch_dist.is_available() and torch_dist.is_initialized()):
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
            raise LaunchError('--launcher mpi: set MASTER_ADDR to the address of rank 0.')
        os.environ['WORLD_SIZE'] = os.environ['OMPI_COMM_WORLD_SIZE']
        os.environ['RANK'] = os.environ['OMPI_COMM_WORLD_RANK']
        os.environ['LOCAL_RANK'] = os.environ.get('OMPI_COMM_WORLD_LOCAL_RANK', '0')
    torch_dist.init_process_group(
        backend='gloo',
        rank=int(os.environ['RANK']),
        world_size=int(os.environ['WORLD_SIZE']),
        **kwargs)


def _check_launcher(launcher: str) -> None:
    if launcher not in LAUNCHERS:
        raise LaunchError(f'launcher must be one of {", ".join(LAUNCHERS)}, got {launcher!r}.')


def launcher_world_size(launcher: str) -> int:
    """The number of training processes, known before the process group is."""
    _check_launcher(launcher)
    key = WORLD_SIZE_ENV.get(launcher)
    if key is None:
        return 1
    if not os.environ.get(key, '').isdigit():
        raise LaunchError(f'--launcher {launcher}: {key} is not set; start the processes with '
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

    Args:
        cfg (Config): Changed in place (the loader's ``batch_size``,
            ``auto_scale_lr``).
        config_path (str): Named in messages.
        options (dict): The ``cfg_options`` the config was merged with.
        auto_scale_lr (bool): ``--auto-scale-lr``.
        world_size (int): The number of processes.
        notes (list): Gets a line where the global batch is not the recipe's.

    Returns:
        str | None: the line logged at start (None without a train loader).
    """
    loader = cfg.get('train_dataloader')
    if not loader or loader.get('batch_size') is None:
        return None
    recipe = cfg.get('global_batch_size')
    per_process = loader.batch_size
    if recipe is not None and (not isinstance(recipe, int) or recipe < 1):
        raise LaunchError(f'{config_path}: global_batch_size must be a positive integer, '
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
            raise LaunchError(
                f'{config_path}: --cfg-options train_dataloader.batch_size={per_process} and '
                f'global_batch_size={recipe} disagree on {world_size} process(es) '
                f'({world_size} x {per_process} != {recipe}); give only one of them.')
        if recipe % world_size:
            raise LaunchError(
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


@HOOKS.register_module()
class LogBatchAndLrHook(Hook):
    """Log the batch line and the learning rate the optimizer starts from.

    ``before_run`` comes after mmengine's ``auto_scale_lr`` and after any
    runner that sets the learning rate, so the logged lr is the one used.

    Args:
        batch_line (str): What :func:`setup_batch` returned.
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


def _set_work_dir(cfg: Config, config_path: str, work_dir: Optional[str]) -> None:
    # work_dir priority: argument > config > ./work_dirs/<config name>
    if work_dir is not None:
        cfg.work_dir = str(work_dir)
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])


def prepare_train_config(cfg: Config,
                         config_path: str,
                         notes: list,
                         work_dir: Optional[str] = None,
                         resume: Union[bool, str, None] = False,
                         amp: bool = False,
                         no_validate: bool = False,
                         auto_scale_lr: bool = False,
                         cfg_options: Optional[dict] = None,
                         launcher: str = 'none') -> Optional[str]:
    """Apply the arguments of a training job to ``cfg`` (in place).

    Args:
        cfg (Config): What :func:`load_config` returned.
        config_path (str): Names the default work directory and the config
            in messages.
        notes (list): Gets the lines to log once the run's log exists.
        work_dir (str, optional): Overrides the config's ``work_dir``.
        resume (bool | str): True resumes from the latest checkpoint of the
            work directory, a path from that checkpoint.
        amp (bool): Train with automatic mixed precision (GPU only).
        no_validate (bool): Do not evaluate during training.
        auto_scale_lr (bool): Keep the per-process batch and scale the lr.
        cfg_options (dict, optional): The options merged into ``cfg``.
        launcher (str): ``'none'``, ``'pytorch'``, ``'slurm'`` or ``'mpi'``.

    Returns:
        str | None: the batch line to log (:func:`setup_batch`).
    """
    cfg.launcher = launcher
    _set_work_dir(cfg, config_path, work_dir)
    setup_amp(cfg, amp, notes)

    if resume is True or resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif resume:
        resume = str(resume)
        if '://' not in resume and not osp.isfile(resume):
            raise LaunchError(f'--resume: checkpoint not found: {resume}')
        cfg.resume = True
        cfg.load_from = resume

    if no_validate:
        cfg.val_cfg = None
        cfg.val_dataloader = None
        cfg.val_evaluator = None

    if auto_scale_lr:
        if (cfg.get('global_batch_size') is None
                and 'base_batch_size' not in (cfg.get('auto_scale_lr') or {})):
            raise LaunchError('--auto-scale-lr needs the batch the lr is set for: '
                              '`global_batch_size = ...` or `auto_scale_lr = '
                              f'dict(base_batch_size=...)` in {config_path}.')
        cfg.auto_scale_lr = dict(cfg.get('auto_scale_lr') or {}, enable=True)
    batch_line = setup_batch(cfg, config_path, cfg_options or {}, auto_scale_lr,
                             launcher_world_size(launcher), notes)

    if launcher != 'none' and not amp_capable():
        setup_cpu_distributed(cfg, launcher, notes)
    try:  # before any data or weights are read
        check_backbone_reaches_neck(cfg)
    except ValueError as e:
        raise LaunchError(str(e)) from e
    return batch_line


def prepare_test_config(cfg: Config,
                        config_path: str,
                        checkpoint: str,
                        notes: list,
                        work_dir: Optional[str] = None,
                        show_dir: Optional[str] = None,
                        launcher: str = 'none') -> None:
    """Apply the arguments of a test job to ``cfg`` (in place).

    Args:
        cfg (Config): What :func:`load_config` returned.
        config_path (str): Names the default work directory and the config
            in messages.
        checkpoint (str): The checkpoint to evaluate.
        notes (list): Gets the lines to log once the run's log exists.
        work_dir (str, optional): Overrides the config's ``work_dir``.
        show_dir (str, optional): Save images with drawn predictions here.
        launcher (str): ``'none'``, ``'pytorch'``, ``'slurm'`` or ``'mpi'``.
    """
    _check_launcher(launcher)
    cfg.launcher = launcher
    _set_work_dir(cfg, config_path, work_dir)
    checkpoint = str(checkpoint)
    if '://' not in checkpoint and not osp.isfile(checkpoint):
        raise LaunchError(f'Checkpoint not found: {checkpoint}')
    cfg.load_from = checkpoint
    cfg.resume = False

    if show_dir is not None:
        enable_visualization(cfg, str(show_dir), config_path)

    # the released recipes evaluate under fp16 autocast: fp32 without a GPU
    setup_eval_fp16(cfg, notes)

    if launcher != 'none' and not amp_capable():
        setup_cpu_distributed(cfg, launcher, notes)


def enable_visualization(cfg: Config, show_dir: str, config_path: str) -> None:
    """Turn on the config's visualization hook, whichever codebase it is from.

    mmpretrain's ``VisualizationHook`` takes ``enable``/``out_dir``,
    mmdet's ``DetVisualizationHook`` takes ``draw``/``test_out_dir`` and
    mmseg's ``SegVisualizationHook`` takes ``draw`` only and saves through the
    visualizer (into ``show_dir/vis_data/vis_image/``); the hook's signature
    decides.
    """
    vis = cfg.get('default_hooks', {}).get('visualization')
    if vis is None:
        raise LaunchError(f'--show-dir: {config_path} has no default_hooks.visualization hook.')
    hook_type = vis['type']
    if isinstance(hook_type, str):
        with HOOKS.switch_scope_and_registry(cfg.get('default_scope')) as registry:
            hook_type = registry.get(hook_type)
    params = inspect.signature(hook_type).parameters if hook_type else {}
    if 'test_out_dir' in params:
        vis.update(draw=True, test_out_dir=show_dir)
    elif 'out_dir' in params:
        vis.update(enable=True, out_dir=show_dir)
    elif 'draw' in params:
        # every test image (the hook draws every `interval`-th batch)
        vis.update(draw=True, interval=1)
        cfg.visualizer['save_dir'] = show_dir
    else:
        raise LaunchError(f'--show-dir: cannot tell how to enable {vis["type"]} '
                          f'(from {config_path}).')


def build_runner(cfg: Config, notes: list = (), batch_line: Optional[str] = None,
                 training: bool = True) -> Runner:
    """Build the Runner of ``cfg`` with mmdtl's checks.

    Logs ``notes`` (once the log file exists) and ``batch_line`` with the
    starting lr; adds :class:`TrunkCheckHook` to configs not based on ours
    (mmdet, mmseg), and for training :class:`NonFiniteLossHook` unless the
    config sets ``default_hooks.nonfinite_loss`` (None keeps mmengine's
    behaviour).
    """
    # 'runner_type' lets a config pick a custom runner (e.g. FlexibleRunner).
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    for note in notes:
        runner.logger.warning(note)
    if batch_line is not None:
        runner.register_hook(LogBatchAndLrHook(batch_line))
    if not any(isinstance(hook, TrunkCheckHook) for hook in runner.hooks):
        runner.register_hook(TrunkCheckHook())
    if training and not any(isinstance(hook, NonFiniteLossHook) for hook in runner.hooks) \
            and 'nonfinite_loss' not in (cfg.get('default_hooks') or {}):
        runner.register_hook(NonFiniteLossHook())
    return runner


def finish_distributed() -> None:
    """End the process group, every rank done first (the tools' last step).

    A gloo rank torn down while another still talks to it aborts at exit
    ("terminate called without an active exception", seen once in CI with
    2 CPU processes).
    """
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.barrier()
        torch_dist.destroy_process_group()

