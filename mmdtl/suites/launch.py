"""How a suite's runs start: the tools' command lines and the devices of each.

A run is ``tools/train.py`` then ``tools/test.py`` (``tools/dist_*.sh`` for
several processes, ``tools/slurm_*.sh`` as one ``srun`` job step each), with
the environment of its :class:`Launch`: its ``CUDA_VISIBLE_DEVICES``, its
torchrun port or its ``OMP_NUM_THREADS``.
"""
import os
import os.path as osp
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from .definitions import REPO, Run, SuiteError
from .run_pool import device_groups


@dataclass
class Launch:
    """How a run's tools start: where, and on how many devices.

    Args:
        per_run (int): devices (processes) of one run; more than 1 runs
            ``tools/dist_*.sh`` (or ``tools/slurm_*.sh`` with that many tasks).
        devices (tuple[str] | None): the run's ``CUDA_VISIBLE_DEVICES``; None
            leaves the environment as it is.
        port (int | None): torchrun's master port (``PORT`` of
            ``tools/dist_*.sh``), distinct for multi-process runs at the same time.
        threads (int | None): ``OMP_NUM_THREADS`` of the run (``--jobs``).
        partition (str | None): a Slurm partition: each tool then runs as one
            ``srun`` job step through ``tools/slurm_*.sh``.
    """
    per_run: int = 1
    devices: Optional[Tuple[str, ...]] = None
    port: Optional[int] = None
    partition: Optional[str] = None
    threads: Optional[int] = None

    def env(self) -> Dict[str, str]:
        """The environment variables the run's commands get."""
        env = {} if self.threads is None else {'OMP_NUM_THREADS': str(self.threads)}
        if self.partition is not None:
            # srun --ntasks, and never more GPUs per node than the run has
            node = int(os.environ.get('GPUS_PER_NODE', 8))
            env.update(GPUS=str(self.per_run), GPUS_PER_NODE=str(min(self.per_run, node)))
        elif self.devices is not None:
            env['CUDA_VISIBLE_DEVICES'] = ','.join(self.devices)
        if self.partition is None and self.per_run > 1 and self.port is not None:
            env['PORT'] = str(self.port)
        return env


def tool_command(tool: str, launch: Launch, config: str, *args: str,
                 job_name: str = 'mmdtl') -> List[str]:
    """``python tools/<tool>.py``, its ``dist_<tool>.sh`` or its ``slurm_<tool>.sh``.

    ``args`` are those of ``tools/<tool>.py`` after the config: for test the
    checkpoint first, for train ``--work-dir DIR`` first.
    """
    if launch.partition is not None:
        script = osp.join(REPO, 'tools', f'slurm_{tool}.sh')
        # slurm_train.sh takes the work dir, slurm_test.sh the checkpoint, after the config
        if tool == 'train':
            assert args[0] == '--work-dir', args
            positional, rest = [args[1]], list(args[2:])
        else:
            positional, rest = [args[0]], list(args[1:])
        return ['bash', script, launch.partition, job_name, config, *positional, *rest]
    if launch.per_run > 1:
        script = osp.join(REPO, 'tools', f'dist_{tool}.sh')
        # dist_test.sh takes the checkpoint before the number of processes
        positional = [config] + ([args[0]] if tool == 'test' else [])
        rest = list(args[1:] if tool == 'test' else args)
        return ['bash', script, *positional, str(launch.per_run), *rest]
    return [sys.executable, osp.join(REPO, 'tools', f'{tool}.py'), config, *args]


def job_name(run: Run) -> str:
    """The Slurm job name of a run."""
    return run.stem if run.shot is None else f'{run.stem}_shot{run.shot}_seed{run.seed}'


def train_command(run: Run, launch: Launch, resume: bool) -> List[str]:
    """The training command of ``run`` (``--resume`` from its last checkpoint)."""
    args = ['--work-dir', run.work_dir] + (['--resume'] if resume else [])
    if run.options:
        args += ['--cfg-options', *run.options]
    return tool_command('train', launch, run.config, *args, job_name=job_name(run))


def test_command(run: Run, launch: Launch, checkpoint: str) -> List[str]:
    """The test command of ``run`` on ``checkpoint``."""
    args = [checkpoint, '--work-dir', run.work_dir]
    if run.options:
        args += ['--cfg-options', *run.options]
    return tool_command('test', launch, run.config, *args, job_name=job_name(run))


def shown(cmd: List[str], launch: Launch) -> str:
    """A command as a shell line, with its environment variables."""
    return ' '.join([f'{k}={v}' for k, v in launch.env().items()] + cmd)


def visible_devices(count: int, check: bool) -> List[str]:
    """The first ``count`` CUDA devices this process may use (``--gpus``);
    with ``check``, an error when fewer are visible (else the plan is shown
    with made-up ids)."""
    listed = os.environ.get('CUDA_VISIBLE_DEVICES')
    if listed is not None:
        ids = [d.strip() for d in listed.split(',') if d.strip()]
    else:
        import torch
        ids = [str(i) for i in range(torch.cuda.device_count())]
    if len(ids) < count:
        if check:
            raise SuiteError(
                f'--gpus {count}: only {len(ids)} CUDA device(s) visible here '
                f'({",".join(ids) or "none"}); give fewer, or name the devices with --devices.')
        ids += [str(i) for i in range(len(ids), count)]  # a dry run shows the plan anyway
    return ids[:count]


def plan_launches(per_run: int = 1, launcher: str = 'local', partition: Optional[str] = None,
                  gpus: Optional[int] = None, devices: Optional[Sequence[str]] = None,
                  jobs: int = 1, dry_run: bool = False) -> List[Launch]:
    """One :class:`Launch` per run that may go at the same time.

    Args:
        per_run (int): Devices of one run (``--gpus-per-run``).
        launcher (str): ``'local'`` or ``'slurm'``.
        partition (str, optional): The Slurm partition.
        gpus (int, optional): GPUs in use at a time (``--gpus``).
        devices (Sequence[str], optional): The device ids (``--devices``).
        jobs (int): CPU runs side by side (``--jobs``).
        dry_run (bool): Plan without checking the visible devices.
    """
    if launcher == 'slurm':
        total = gpus or per_run
        if total % per_run:
            raise SuiteError(f'--gpus {total} does not split into runs of --gpus-per-run '
                             f'{per_run}.')
        return [Launch(per_run, partition=partition) for _ in range(total // per_run)]
    if jobs > 1:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        return [Launch(per_run, threads=threads) for _ in range(jobs)]
    if not devices and not gpus:  # one run at a time on the devices the environment gives
        return [Launch(per_run)]
    devices = devices or visible_devices(gpus, check=not dry_run)
    try:
        groups = device_groups(devices, per_run)
    except ValueError as e:
        raise SuiteError(f'--devices/--gpus with --gpus-per-run {per_run}: {e}') from e
    port = int(os.environ.get('PORT', 29500))
    return [Launch(per_run, group, port + slot if len(groups) > 1 else None)
            for slot, group in enumerate(groups)]
