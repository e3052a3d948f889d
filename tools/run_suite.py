"""Run one of the paper's protocols end to end and write its result table.

Every config of the suite is trained with ``tools/train.py`` and its
checkpoint evaluated with ``tools/test.py``, one run after the other, or with
``--gpus N`` up to N runs at the same time, one per GPU, each with the exact
recipe of its config (``--gpus-per-run K``: N / K runs of K GPUs through
``tools/dist_train.sh`` / ``tools/dist_test.sh``; ``--launcher slurm``: every
step one ``srun`` job step through ``tools/slurm_*.sh``). A run that has its
``results.json`` is skipped; an interrupted one is resumed from its
``last_checkpoint``. The metrics are collected into
``<work-dir>/<suite>/results.md`` and ``results.csv`` in the paper's layout:

* VTAB-1k: one row per method, the 19 tasks, the mean of every group
  (Natural, Specialized, Structured) and ``Mean``, the mean of the three group
  means (the convention of the VTAB-1k tables of NOAH and DTL); the plain mean
  of the 19 tasks is the last column.
* few-shot: one row per method and dataset, one column per shot, each cell the
  mean (± std) over the seeds; an ``average`` row per method.
* domain-generalization: one row per test set (ImageNet-A/-R twice: over their
  200 classes and over all 1000), one column per method, mean (± std) over the
  seeds. As in the paper, every target is its own config and run (its own lr);
  the runs of a method fill its column. ``domain-generalization-all-targets``
  is the cheaper option of one model per method tested on all five targets.

Examples::

    python tools/run_suite.py vtab-vit-dtl+ --data-root data/vtab-1k
    python tools/run_suite.py vtab-vit-dtl+ --data-root data/vtab-1k --val   # train800 -> val200
    python tools/run_suite.py few-shot --data-root data/fgfs --shots 1 16 --seeds 0
    python tools/run_suite.py vtab-vit-dtl+ --data-root data/vtab-1k --gpus 8  # 8 runs at once
    python tools/run_suite.py domain-generalization --data-root data/dg --gpus 8 --gpus-per-run 4
    python tools/run_suite.py vtab-vit-dtl --data-root data/vtab-1k --launcher slurm \
        --partition PARTITION --gpus 16                 # 16 srun steps of 1 GPU at a time
    python tools/run_suite.py vtab-swin-dtl --dry-run       # print the commands and the table
"""
import argparse
import csv
import glob
import json
import os
import os.path as osp
import subprocess
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from mmdtl.datasets.domain_generalization import DG_SUBSET_TARGETS, DG_TARGETS  # noqa: E402
from mmdtl.datasets.few_shot import (  # noqa: E402
    FEW_SHOT_DATASETS,
    FEW_SHOT_SEEDS,
    FEW_SHOT_SHOTS,
    few_shot_run_dir,
)
from mmdtl.datasets.vtab import VTAB1K_GROUPS, VTAB1K_TASKS  # noqa: E402
from mmdtl.utils.ablation import (  # noqa: E402
    AblationSetting,
    ablation_settings,
    setting_description,
)
from mmdtl.utils.cfg_options import parse_cfg_options  # noqa: E402
from mmdtl.utils.run_pool import device_groups, run_on_devices  # noqa: E402
from mmdtl.utils.stats import mean as _mean  # noqa: E402
from mmdtl.utils.stats import sample_std as _std  # noqa: E402

# suite -> (kind, config glob relative to the repository)
SUITES = OrderedDict([
    ('vtab-vit-dtl', ('vtab', 'configs/dtl/vtab/vit-b_dtl_*.py')),
    ('vtab-vit-dtl+', ('vtab', 'configs/dtl/vtab/vit-b_dtl+_*.py')),
    ('vtab-swin-dtl', ('vtab', 'configs/dtl/vtab/swin-b_dtl_*.py')),
    ('vtab-swin-dtl+', ('vtab', 'configs/dtl/vtab/swin-b_dtl+_*.py')),
    ('few-shot', ('few-shot', 'configs/dtl/few_shot/*.py')),
    # the paper's protocol: one model per target (each with its own lr)
    ('domain-generalization', ('dg', 'configs/dtl/domain_generalization/*.py')),
    # option: one model per method, tested on all five targets at once
    ('domain-generalization-all-targets',
     ('dg', 'configs/dtl/domain_generalization/all_targets/*.py')),
    # the demo's mini VTAB-1k, every method (tools/misc/transfer_demo.py runs
    # the same configs in one process, with memory meters, seeds and a plot)
    ('mini-vtab', ('mini-vtab', 'configs/demo/vit-demo_*.py')),
    # DTL+ on random trunks of every architecture (ViT, DeiT3, BEiT, ConvNeXt):
    # each trains through the one runner; the ViT row is the demo's control
    ('mini-vtab-trunks', ('mini-vtab', 'configs/demo/*-demo_dtl+random-trunk_*.py')),
    # side-network ablations (M, rank, DWConv kernel, taps) around DTL+, every
    # setting on every task and --seeds: the demo's mini VTAB-1k (CPU) and
    # VTAB-1k with the released ViT-B recipe (GPU)
    ('ablation-mini-vtab', ('ablation', 'configs/demo/vit-demo_dtl+_*.py')),
    ('ablation-vtab-vit', ('ablation', 'configs/dtl/vtab/vit-b_dtl+_*.py')),
])
# ablation suite -> its benchmark and how its memory columns are counted:
# 'real' runs one CPU step (exact), 'fake' counts on fake tensors (no compute)
ABLATION_MEMORY = {'ablation-mini-vtab': 'real', 'ablation-vtab-vit': 'fake'}
# VTAB-1k validation protocol: train on train800, evaluate on val200.
VAL_MODE_OPTIONS = [
    'train_dataloader.dataset.split=train800',
    'val_dataloader.dataset.split=val200',
    'test_dataloader.dataset.split=val200',
]
TOP1 = 'accuracy/top1'
RESULTS = 'results.json'
TRAIN_DONE = 'train_done.json'


@dataclass
class Run:
    """One training + test of a config (for few-shot suites: one shot and seed)."""
    config: str
    stem: str
    method: str  # e.g. 'vit-b_dtl+'
    dataset: str  # VTAB task, few-shot dataset, or the source for DG
    work_dir: str  # given to the tools
    run_dir: str  # where checkpoints and results are
    uses_best: bool
    shot: Optional[int] = None
    seed: Optional[int] = None
    options: List[str] = field(default_factory=list)
    setting: Optional[str] = None  # ablation suites: the setting's name
    # the epoch whose validation is the test (same loader; ablation suites):
    # its metrics are read from the training log instead of running the test
    test_is_val_at: Optional[int] = None

    @property
    def label(self) -> str:
        if self.setting is not None:
            return f'{self.stem} [{self.setting}] seed={self.seed}'
        extra = '' if self.shot is None else f' shot={self.shot} seed={self.seed}'
        return f'{self.stem}{extra}'


def split_stem(stem: str) -> Tuple[str, str]:
    """``'vit-b_dtl+_cifar'`` -> ``('vit-b_dtl+', 'cifar')``."""
    parts = stem.split('_', 2)
    if len(parts) == 3:
        return f'{parts[0]}_{parts[1]}', parts[2]
    return stem, stem


def suite_configs(suite: str, configs: Optional[Sequence[str]]) -> List[str]:
    """The suite's configs (VTAB in the order of the tables), or the given ones."""
    if configs:
        missing = [c for c in configs if not osp.isfile(c)]
        if missing:
            raise SystemExit(f'--configs: not found: {", ".join(missing)}')
        return [osp.abspath(c) for c in configs]
    kind, pattern = SUITES[suite]
    found = sorted(glob.glob(osp.join(REPO, pattern)))
    if kind == 'vtab':
        order = {task: i for i, task in enumerate(VTAB1K_TASKS)}
        found.sort(key=lambda p: order.get(split_stem(osp.basename(p)[:-3])[1], len(order)))
    if not found:
        raise SystemExit(f'No configs match {pattern} for suite {suite}.')
    return found


def plan_runs(suite: str, configs: List[str], work_root: str, shots, seeds, val: bool,
              user_options: List[str], data_root: Optional[str]) -> List[Run]:
    """Load every config once (with the options) and list its runs."""
    from mmengine.config import Config

    kind = SUITES[suite][0]
    suite_dir = osp.join(work_root, suite + ('_val' if val else ''))
    runs = []
    # an ablation's settings are those around the first config's side
    # network, the same for every task (whose own values make the base row)
    settings = suite_settings(configs) if kind == 'ablation' else []
    for path in configs:
        stem = osp.basename(path)[:-3]
        cfg = Config.fromfile(path)
        options = []
        if data_root:
            for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
                if cfg.get(loader) is not None:
                    options.append(f'{loader}.dataset.data_root={data_root}')
        if val:
            options += VAL_MODE_OPTIONS
        options += user_options
        cfg.merge_from_dict(parse_cfg_options(options))
        method, name = split_stem(stem)
        checkpoint_hook = (cfg.get('default_hooks') or {}).get('checkpoint') or {}
        uses_best = bool(checkpoint_hook.get('save_best'))
        work_dir = osp.join(suite_dir, stem)
        if kind in ('vtab', 'mini-vtab'):
            runs.append(Run(path, stem, method, cfg.get('task', name), work_dir, work_dir,
                            uses_best, options=options))
            continue
        if kind == 'ablation':
            last_val_is_test = (not uses_best and cfg.get('val_dataloader') is not None
                                and cfg.val_dataloader == cfg.get('test_dataloader')
                                and cfg.get('val_evaluator') == cfg.get('test_evaluator')
                                and cfg.train_cfg.max_epochs % cfg.train_cfg.get(
                                    'val_interval', 1) == 0)
            for setting in settings:
                setting_dir = osp.join(suite_dir, setting_folder(setting.name), stem)
                for seed in seeds:
                    run_dir = osp.join(setting_dir, f'seed{seed}')
                    runs.append(Run(path, stem, method, cfg.get('task', name), run_dir, run_dir,
                                    uses_best, seed=seed, setting=setting.name,
                                    options=options + setting.cfg_options() +
                                    [f'randomness.seed={seed}'],
                                    test_is_val_at=(cfg.train_cfg.max_epochs
                                                    if last_val_is_test else None)))
            continue
        dataset = cfg.get('dataset_name', name) if kind == 'few-shot' else dg_test_sets(cfg)
        run_shots = shots or ([cfg.get('shot', 16)] if kind == 'dg' else list(FEW_SHOT_SHOTS))
        for shot in run_shots:
            for seed in seeds:
                runs.append(Run(path, stem, method, dataset, work_dir,
                                few_shot_run_dir(work_dir, shot, seed), uses_best, shot, seed,
                                options + [f'shot={shot}', f'seed={seed}']))
    if kind == 'ablation':  # seed by seed: a partial suite has whole seeds
        runs.sort(key=lambda run: list(seeds).index(run.seed))
    return runs


def trunk_depth(backbone_cfg) -> int:
    """Number of blocks of a ViT-like backbone config (``arch`` a name of
    its class's ``arch_zoo`` or a dict with ``num_layers``)."""
    from mmpretrain.registry import MODELS

    arch = backbone_cfg.get('arch', 'base')
    if isinstance(arch, dict):
        return arch['num_layers']
    backbone_cls = MODELS.get(backbone_cfg['type'])
    zoo = getattr(backbone_cls, 'arch_zoo', {})
    for names, settings in zoo.items():
        if arch in (names if isinstance(names, (list, tuple)) else [names]):
            return settings['num_layers']
    raise SystemExit(f'ablation: cannot tell the depth of backbone arch {arch!r} '
                     f'({backbone_cfg["type"]}); give arch as a dict with num_layers')


def suite_settings(configs: Sequence[str]) -> List[AblationSetting]:
    """The ablation settings around the side network of a suite's configs
    (the first one's; every kernel is tried where the tasks' kernels differ,
    as the released VTAB-1k recipe's)."""
    from mmengine.config import Config

    import mmdtl  # noqa: F401  (registries)

    cfgs = [Config.fromfile(path) for path in configs]
    csn = cfgs[0].model.backbone.csn
    kernels = {cfg.model.backbone.csn.get('dwconv_kernel', 0) for cfg in cfgs}
    return ablation_settings(trunk_depth(cfgs[0].model.backbone), csn.start, csn.rank,
                             kernels.pop() if len(kernels) == 1 else None)


def setting_folder(name: str) -> str:
    """``'taps every 2'`` -> ``'taps-every-2'``: a run folder per setting."""
    return name.replace('=', '').replace(' ', '-')


def dg_test_sets(cfg) -> str:
    """The DG test set(s) of a config, comma-separated (``Run.dataset``)."""
    names = ((cfg.get('test_dataloader') or {}).get('dataset') or {}).get('name', 'imagenet')
    return names if isinstance(names, str) else ','.join(names)


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
    return run.stem if run.shot is None else f'{run.stem}_shot{run.shot}_seed{run.seed}'


def train_command(run: Run, launch: Launch, resume: bool) -> List[str]:
    args = ['--work-dir', run.work_dir] + (['--resume'] if resume else [])
    if run.options:
        args += ['--cfg-options', *run.options]
    return tool_command('train', launch, run.config, *args, job_name=job_name(run))


def test_command(run: Run, launch: Launch, checkpoint: str) -> List[str]:
    args = [checkpoint, '--work-dir', run.work_dir]
    if run.options:
        args += ['--cfg-options', *run.options]
    return tool_command('test', launch, run.config, *args, job_name=job_name(run))


def shown(cmd: List[str], launch: Launch) -> str:
    """A command as a shell line, with its environment variables."""
    return ' '.join([f'{k}={v}' for k, v in launch.env().items()] + cmd)


def find_checkpoint(run: Run) -> str:
    """The best-validation checkpoint where the config saves one, else the last."""
    if run.uses_best:
        best = glob.glob(osp.join(run.run_dir, 'best_*.pth'))
        if not best:
            raise RuntimeError(f'{run.label}: no best_*.pth in {run.run_dir}; validation never '
                               'ran (is val_interval larger than max_epochs?).')
        return max(best, key=osp.getmtime)
    last = osp.join(run.run_dir, 'last_checkpoint')
    if not osp.isfile(last):
        raise RuntimeError(f'{run.label}: training left no {last}.')
    with open(last) as f:
        path = f.read().strip()
    if not osp.isfile(path):  # the folder was moved: same file name here
        path = osp.join(run.run_dir, osp.basename(path))
    return path


def last_validation(run: Run) -> Optional[dict]:
    """The metrics of the validation at epoch ``run.test_is_val_at`` in the
    newest training log (``<timestamp>/vis_data/scalars.json``), or None."""
    logs = sorted(glob.glob(osp.join(run.run_dir, '*', 'vis_data', 'scalars.json')),
                  key=osp.getmtime)
    for path in reversed(logs):
        with open(path) as f:
            entries = [json.loads(line) for line in f if line.strip()]
        for entry in reversed(entries):
            if entry.get('step') == run.test_is_val_at and TOP1 in entry:
                return {k: v for k, v in entry.items() if isinstance(v, (int, float))
                        and k not in ('time', 'data_time', 'memory', 'step')}
    return None


def find_test_metrics(run_dir: str, since: float) -> Optional[dict]:
    """The metrics tools/test.py wrote (``<timestamp>/<timestamp>.json``)."""
    newest = None
    for path in glob.glob(osp.join(run_dir, '*', '*.json')):
        stamp = osp.basename(osp.dirname(path))
        if osp.basename(path) != f'{stamp}.json':
            continue
        mtime = osp.getmtime(path)
        if mtime >= since - 1 and (newest is None or mtime > newest[0]):
            newest = (mtime, path)
    if newest is None:
        return None
    with open(newest[1]) as f:
        tags = json.load(f)
    # the log also has timings (time, data_time, memory): not metrics
    return {k: v for k, v in tags.items()
            if isinstance(v, (int, float)) and k not in ('time', 'data_time', 'memory')}


def execute(cmd: List[str], log_file: str, verbose: bool, extra_env: Optional[dict] = None,
            prefix: str = '') -> int:
    """Run a tool; its output goes to the log file (and the terminal if verbose)."""
    os.makedirs(osp.dirname(log_file), exist_ok=True)
    env = dict(os.environ, **(extra_env or {}))
    env['PYTHONPATH'] = os.pathsep.join(p for p in (REPO, env.get('PYTHONPATH')) if p)
    with open(log_file, 'a') as log:
        log.write(f'$ {" ".join(f"{k}={v}" for k, v in (extra_env or {}).items())}'
                  f'{" " if extra_env else ""}{" ".join(cmd)}\n')
        log.flush()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1)
        for line in proc.stdout:
            log.write(line)
            if verbose:
                sys.stdout.write(prefix + line)
        return proc.wait()


def tail(path: str, lines: int = 30) -> str:
    try:
        with open(path, errors='replace') as f:
            return ''.join(f.readlines()[-lines:])
    except OSError:
        return ''


def write_json(path: str, obj) -> None:
    """Write atomically: a run is skipped once its results.json exists."""
    tmp = f'{path}.{os.getpid()}.tmp'
    with open(tmp, 'w') as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def run_one(run: Run, index: int, total: int, launch: Launch, verbose: bool,
            dry_run: bool) -> bool:
    """Train and test one run unless done; False when a step failed."""
    head = f'[{index}/{total}] {run.label}'
    results = osp.join(run.run_dir, RESULTS)
    if osp.isfile(results):
        print(f'{head}: done, skipped ({results})', flush=True)
        return True
    train_done = osp.isfile(osp.join(run.run_dir, TRAIN_DONE))
    resume = not train_done and osp.isfile(osp.join(run.run_dir, 'last_checkpoint'))
    if dry_run:
        if not train_done:
            print(f'{head}: would {"resume" if resume else "train"}:\n  '
                  f'{shown(train_command(run, launch, resume), launch)}')
        print(f'{head}: would test:\n  '
              f'{shown(test_command(run, launch, "<checkpoint>"), launch)}', flush=True)
        return True
    where = f' on devices {",".join(launch.devices)}' if launch.devices else ''
    prefix = f'[{run.label}] ' if launch.devices or launch.partition else ''
    start = time.time()
    if not train_done:
        print(f'{head}: {"resuming" if resume else "training"} in {run.run_dir}{where}',
              flush=True)
        log = osp.join(run.run_dir, 'run_suite_train.log')
        if execute(train_command(run, launch, resume), log, verbose, launch.env(), prefix):
            print(f'{head}: training FAILED; log {log}:\n{tail(log)}', flush=True)
            return False
        write_json(osp.join(run.run_dir, TRAIN_DONE), dict(seconds=round(time.time() - start, 1)))
    try:
        checkpoint = find_checkpoint(run)
    except RuntimeError as e:
        print(f'{head}: FAILED: {e}', flush=True)
        return False
    metrics = last_validation(run) if run.test_is_val_at else None
    if metrics:
        record = dict(config=osp.relpath(run.config, REPO), method=run.method,
                      dataset=run.dataset, shot=run.shot, seed=run.seed, checkpoint=checkpoint,
                      metrics=metrics, options=run.options,
                      metrics_from=f'validation of epoch {run.test_is_val_at} (the test '
                      'loader is the val loader)',
                      minutes=round((time.time() - start) / 60, 2))
        write_json(results, record)
        print(f'{head}: {", ".join(f"{k}={v:.2f}" for k, v in metrics.items())} '
              f'(last validation = test)', flush=True)
        return True
    print(f'{head}: testing {osp.basename(checkpoint)}{where}', flush=True)
    log = osp.join(run.run_dir, 'run_suite_test.log')
    since = time.time()
    if execute(test_command(run, launch, checkpoint), log, verbose, launch.env(), prefix):
        print(f'{head}: test FAILED; log {log}:\n{tail(log)}', flush=True)
        return False
    metrics = find_test_metrics(run.run_dir, since)
    if not metrics:
        print(f'{head}: FAILED: tools/test.py wrote no metrics json under {run.run_dir}',
              flush=True)
        return False
    record = dict(config=osp.relpath(run.config, REPO), method=run.method, dataset=run.dataset,
                  shot=run.shot, seed=run.seed, checkpoint=checkpoint, metrics=metrics,
                  options=run.options, minutes=round((time.time() - start) / 60, 2))
    write_json(results, record)
    top1 = ', '.join(f'{k}={v:.2f}' for k, v in metrics.items() if 'top1' in k)
    print(f'{head}: {top1 or metrics}', flush=True)
    return True


def visible_devices(count: int, check: bool) -> List[str]:
    """The first ``count`` CUDA devices this process may use (``--gpus``)."""
    listed = os.environ.get('CUDA_VISIBLE_DEVICES')
    if listed is not None:
        ids = [d.strip() for d in listed.split(',') if d.strip()]
    else:
        import torch
        ids = [str(i) for i in range(torch.cuda.device_count())]
    if len(ids) < count:
        if check:
            raise SystemExit(
                f'--gpus {count}: only {len(ids)} CUDA device(s) visible here '
                f'({",".join(ids) or "none"}); give fewer, or name the devices with --devices.')
        ids += [str(i) for i in range(len(ids), count)]  # a dry run shows the plan anyway
    return ids[:count]


def plan_launches(args) -> List[Launch]:
    """One Launch per run that may go at the same time (``--gpus`` / ``--devices``)."""
    per_run = args.gpus_per_run
    if args.launcher == 'slurm':
        total = args.gpus or per_run
        if total % per_run:
            raise SystemExit(f'--gpus {total} does not split into runs of --gpus-per-run '
                             f'{per_run}.')
        return [Launch(per_run, partition=args.partition) for _ in range(total // per_run)]
    if args.jobs > 1:
        threads = max(1, (os.cpu_count() or 1) // args.jobs)
        return [Launch(per_run, threads=threads) for _ in range(args.jobs)]
    if args.devices:
        devices = args.devices
    elif args.gpus:
        devices = visible_devices(args.gpus, check=not args.dry_run)
    else:  # one run at a time on the devices the environment gives
        return [Launch(per_run)]
    try:
        groups = device_groups(devices, per_run)
    except ValueError as e:
        raise SystemExit(f'--devices/--gpus with --gpus-per-run {per_run}: {e}') from e
    port = int(os.environ.get('PORT', 29500))
    return [Launch(per_run, group, port + slot if len(groups) > 1 else None)
            for slot, group in enumerate(groups)]


# ----------------------------------------------------------------------------
# Tables (pure functions of the collected metrics)


def _fmt(value: Optional[float]) -> str:
    return '-' if value is None else f'{value:.1f}'


def vtab_summary(per_task: Dict[str, float]) -> Dict[str, Optional[float]]:
    """Group means, their mean and the plain task mean of one method.

    A group mean needs every task of the group; ``Mean`` (the paper's, the
    mean of the three group means) needs every group; ``Mean (tasks)`` is the
    mean of all 19 tasks.
    """
    summary = OrderedDict()
    for group, tasks in VTAB1K_GROUPS.items():
        values = [per_task[t] for t in tasks if t in per_task]
        summary[group] = _mean(values) if len(values) == len(tasks) else None
    groups = list(summary.values())
    summary['mean'] = None if None in groups else _mean(groups)
    summary['mean_tasks'] = (_mean([per_task[t] for t in VTAB1K_TASKS])
                             if all(t in per_task for t in VTAB1K_TASKS) else None)
    return summary


def vtab_table(results: Dict[str, Dict[str, float]]) -> Tuple[List[str], List[list]]:
    """``{method: {task: top1}}`` -> header and rows (numbers or None)."""
    header = ['method'] + list(VTAB1K_TASKS) + [g.capitalize() for g in VTAB1K_GROUPS] + \
        ['Mean', 'Mean (tasks)']
    rows = []
    for method, per_task in results.items():
        summary = vtab_summary(per_task)
        rows.append([method] + [per_task.get(t) for t in VTAB1K_TASKS] + list(summary.values()))
    return header, rows


def mini_vtab_table(results: Dict[str, Dict[str, float]]) -> Tuple[List[str], List[list]]:
    """The demo's mini VTAB-1k: ``{method: {task: top1}}`` -> header and rows
    (tasks, group means, ``Mean`` of the group means; None where incomplete)."""
    from mmdtl.datasets.mini_vtab import MINI_VTAB_GROUPS, MINI_VTAB_TASKS

    header = (['method'] + list(MINI_VTAB_TASKS) +
              [g.capitalize() for g in MINI_VTAB_GROUPS] + ['Mean'])
    rows = []
    for method, per_task in results.items():
        groups = [_mean([per_task[t] for t in tasks]) if all(t in per_task for t in tasks)
                  else None for tasks in MINI_VTAB_GROUPS.values()]
        mean = None if None in groups else _mean(groups)
        rows.append([method] + [per_task.get(t) for t in MINI_VTAB_TASKS] + groups + [mean])
    return header, rows


def few_shot_table(results: Dict[Tuple[str, str, int], Dict[int, float]],
                   shots: Sequence[int]) -> Tuple[List[str], List[list]]:
    """``{(method, dataset, shot): {seed: top1}}`` -> header and rows.

    A cell is ``(mean over seeds, std, number of seeds)``; every method ends
    with an ``average`` row, the mean over its datasets of the cell means
    (None unless every dataset has the shot).
    """
    header = ['method', 'dataset'] + [f'{k}-shot' for k in shots]
    methods = OrderedDict()
    for (method, dataset, _), _seeds in results.items():
        methods.setdefault(method, OrderedDict()).setdefault(dataset, None)
    known = list(FEW_SHOT_DATASETS)
    rows = []
    for method, datasets in methods.items():
        ordered = sorted(datasets, key=lambda d: (known.index(d) if d in known else len(known), d))
        cell_means = {shot: [] for shot in shots}
        for dataset in ordered:
            row = [method, dataset]
            for shot in shots:
                values = list((results.get((method, dataset, shot)) or {}).values())
                if values:
                    cell = (_mean(values), _std(values), len(values))
                    cell_means[shot].append(cell[0])
                else:
                    cell = None
                row.append(cell)
            rows.append(row)
        average = [method, 'average']
        for shot in shots:
            means = cell_means[shot]
            average.append((_mean(means), None, None) if means and len(means) == len(ordered)
                           else None)
        rows.append(average)
    return header, rows


def dg_rows() -> List[Tuple[str, str]]:
    """``(row label, metric key)`` of the DG table, in the paper's order."""
    rows = []
    for name, label in DG_TARGETS.items():
        if name in DG_SUBSET_TARGETS:
            rows.append((f'{label} (200 classes)', f'accuracy/{name}/top1_masked'))
            rows.append((f'{label} (1000 classes)', f'accuracy/{name}/top1'))
        else:
            rows.append((label, f'accuracy/{name}/top1'))
    return rows


def dg_table(results: Dict[str, Dict[int, Dict[str, float]]]) -> Tuple[List[str], List[list]]:
    """``{method: {seed: metrics}}`` -> header and rows, one per test set."""
    methods = list(results)
    header = ['test set'] + methods
    rows = []
    for label, key in dg_rows():
        row = [label]
        for method in methods:
            values = [m[key] for m in results[method].values() if key in m]
            row.append((_mean(values), _std(values), len(values)) if values else None)
        rows.append(row)
    return header, rows


def _cell_text(cell, expected_n: Optional[int]) -> str:
    if cell is None:
        return '-'
    if not isinstance(cell, tuple):
        return _fmt(cell)
    mean, std, n = cell
    text = _fmt(mean)
    if n is not None and n > 1:
        text += f' ±{std:.1f}'
    if n is not None and expected_n and n < expected_n:
        text += '*'
    return text


def to_markdown(header: List[str], rows: List[list], expected_n: Optional[int] = None) -> str:
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for row in rows:
        lines.append('| ' + ' | '.join(
            str(c) if isinstance(c, str) else _cell_text(c, expected_n) for c in row) + ' |')
    return '\n'.join(lines) + '\n'


def to_csv(path: str, header: List[str], rows: List[list]) -> None:
    """Means (and std / number of seeds for seed-averaged cells) as plain numbers."""
    seeded = any(isinstance(c, tuple) for row in rows for c in row)
    with open(path, 'w', newline='') as f:
        writer = csv.writer(f)
        if not seeded:
            writer.writerow(header)
            for row in rows:
                writer.writerow(['' if c is None else (c if isinstance(c, str) else f'{c:.2f}')
                                 for c in row])
            return
        labels = [h for h, c in zip(header, rows[0]) if isinstance(c, str)] if rows else []
        values = header[len(labels):]
        writer.writerow(labels + [f'{h}{s}' for h in values for s in ('', ' std', ' n')])
        for row in rows:
            out = list(row[:len(labels)])
            for cell in row[len(labels):]:
                mean, std, n = cell if cell is not None else (None, None, None)
                out += ['' if mean is None else f'{mean:.2f}',
                        '' if std is None else f'{std:.2f}', '' if n is None else n]
            writer.writerow(out)


def collect(suite: str, runs: List[Run], seeds: Sequence[int], shots) -> Tuple[str, List, List]:
    """Read the runs' results.json into the suite's table."""
    kind = SUITES[suite][0]
    records = []
    for run in runs:
        path = osp.join(run.run_dir, RESULTS)
        if osp.isfile(path):
            with open(path) as f:
                records.append((run, json.load(f)['metrics']))
    if kind in ('vtab', 'mini-vtab'):
        results = OrderedDict((run.method, {}) for run in runs)
        for run, metrics in records:
            if TOP1 in metrics:
                results[run.method][run.dataset] = metrics[TOP1]
        if kind == 'vtab':
            header, rows = vtab_table(results)
            title = ('VTAB-1k top-1 (%); Mean = mean of the three group means, '
                     'Mean (tasks) = mean of the 19 tasks')
        else:
            header, rows = mini_vtab_table(results)
            title = 'Mini VTAB-1k top-1 (%); Mean = mean of the group means'
        return title + '\n\n' + to_markdown(header, rows), header, rows
    if kind == 'few-shot':
        results = OrderedDict(((run.method, run.dataset, run.shot), {}) for run in runs)
        for run, metrics in records:
            if TOP1 in metrics:
                results[run.method, run.dataset, run.shot][run.seed] = metrics[TOP1]
        all_shots = shots or sorted({run.shot for run in runs})
        header, rows = few_shot_table(results, all_shots)
        title = (f'Few-shot FGVC top-1 (%), mean ± std over seeds {list(seeds)} '
                 '(* fewer seeds than planned); average = mean over the datasets')
        return title + '\n\n' + to_markdown(header, rows, len(seeds)), header, rows
    results = OrderedDict((run.method, {}) for run in runs)
    for run, metrics in records:
        # one run per target (the paper's protocol): a method's targets merge
        results[run.method].setdefault(run.seed, {}).update(metrics)
    header, rows = dg_table(results)
    title = (f'Domain generalization top-1 (%), trained on ImageNet 16-shot, mean ± std over '
             f'seeds {list(seeds)} (* fewer seeds than planned)')
    return title + '\n\n' + to_markdown(header, rows, len(seeds)), header, rows


def ablation_benchmark(suite: str) -> Tuple[List[str], Dict[str, List[str]]]:
    """The tasks and groups of an ablation suite's benchmark."""
    if SUITES[suite][1].startswith('configs/demo/'):
        from mmdtl.datasets.mini_vtab import MINI_VTAB_GROUPS, MINI_VTAB_TASKS
        return list(MINI_VTAB_TASKS), dict(MINI_VTAB_GROUPS)
    return list(VTAB1K_TASKS), dict(VTAB1K_GROUPS)


def setting_memory(suite: str, run: Run, suite_dir: str, compute: bool,
                   store: bool = True) -> Optional[dict]:
    """Trainable parameters and step memory of a setting (on the config of
    ``run``), cached in ``<setting>/memory.json`` under the config's text."""
    import hashlib

    from mmengine.config import Config

    from mmdtl.utils.config_memory import config_step_memory

    cfg = Config.fromfile(run.config)
    cfg.merge_from_dict(parse_cfg_options(run.options))
    mode = ABLATION_MEMORY[suite]
    key = hashlib.sha256(f'{mode}\n{cfg.pretty_text}'.encode()).hexdigest()
    path = osp.join(suite_dir, setting_folder(run.setting), 'memory.json')
    if osp.isfile(path):
        with open(path) as f:
            cached = json.load(f)
        if cached.get('key') == key:
            return cached
    if not compute:
        return None
    record = dict(config_step_memory(cfg, fake=mode == 'fake'), key=key, mode=mode,
                  config=osp.relpath(run.config, REPO),
                  batch_size=cfg.train_dataloader.batch_size)
    if store:
        os.makedirs(osp.dirname(path), exist_ok=True)
        write_json(path, record)
    return record


def collect_ablation(suite: str, runs: List[Run], suite_dir: str, write: bool) -> str:
    """The ablation's table (markdown, returned; with ``write`` also
    ``results.csv`` and the Pareto plot ``pareto.png``): accuracy over seeds
    per task, group and ``Mean``, and per setting the backbone's trainable
    parameters and the memory of one training step."""
    from mmdtl.utils.ablation import ablation_table, pareto_front, plot_pareto

    tasks, groups = ablation_benchmark(suite)
    results = OrderedDict()
    first = OrderedDict()  # setting -> its first run (the memory is counted on its config)
    for run in runs:
        first.setdefault(run.setting, run)
        results.setdefault(run.setting, {})
        path = osp.join(run.run_dir, RESULTS)
        if osp.isfile(path):
            with open(path) as f:
                top1 = json.load(f)['metrics'].get(TOP1)
            if top1 is not None:
                results[run.setting].setdefault(run.dataset, {})[run.seed] = top1
    rows = ablation_table(results, tasks, groups)
    # an estimate on fake tensors costs no data and seconds: a dry run shows it too
    memory = {name: setting_memory(suite, run, suite_dir,
                                   compute=write or ABLATION_MEMORY[suite] == 'fake',
                                   store=write)
              for name, run in first.items()}
    from mmengine.config import Config
    configs = list(OrderedDict.fromkeys(run.config for run in runs))
    cfgs = [Config.fromfile(path) for path in configs]
    bases = [cfg.model.backbone.csn.to_dict() for cfg in cfgs]
    settings = {s.name: s for s in suite_settings(configs)}
    # a field the tasks set differently (the released VTAB kernels) reads 'per task'
    base_csn = {key: value if all(b.get(key) == value for b in bases) else 'per task'
                for key, value in bases[0].items()}
    points = {name: (memory[name]['activations_mb'], row['Mean'][0])
              for name, row in rows.items() if memory[name] and row['Mean']}
    front = set(pareto_front(points))
    shown_cells = tasks if len(tasks) <= 6 else []
    header = (['setting', 'side network'] + shown_cells + [g.capitalize() for g in groups] +
              ['Mean', 'trainable (backbone)', 'activations saved', 'step peak', 'front'])
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for name, row in rows.items():
        mem = memory[name]
        cells = [name, setting_description(settings[name], base_csn)]
        cells += [_cell_text(row[c], None) for c in shown_cells + [g.capitalize() for g in groups]]
        cells += [_cell_text(row['Mean'], None)]
        cells += ([f'{mem["trainable"]:,}', f'{mem["activations_mb"]:.2f} MB',
                   f'{mem["step_peak_mb"]:.2f} MB'] if mem else ['-', '-', '-'])
        cells.append('yes' if name in front else '')
        lines.append('| ' + ' | '.join(cells) + ' |')
    seeds = sorted({run.seed for run in runs})
    some = next((m for m in memory.values() if m), None)
    how = ('' if some is None else
           f' Memory: one fp32 training step at batch {some["batch_size"]} of '
           f'{some["config"]}, {"run on CPU (profiler)" if some["mode"] == "real" else "counted on fake tensors (estimate)"}; '  # noqa: E501
           'activations = bytes saved for backward, step peak = live tensors at the peak.')
    text = (f'Ablation around {next(iter(first.values())).method}: top-1 (%) '
            f'mean ± std over seeds {seeds}; Mean = mean of the group means. front = on the '
            f'Pareto front of Mean vs activations saved.{how}\n\n' + '\n'.join(lines) + '\n')
    if write:
        os.makedirs(suite_dir, exist_ok=True)
        csv_path = osp.join(suite_dir, 'results.csv')
        with open(csv_path + '.tmp', 'w', newline='') as f:
            writer = csv.writer(f)
            cols = tasks + [g.capitalize() for g in groups] + ['Mean']
            writer.writerow(['setting', 'axis', 'side network'] +
                            [f'{c}{s}' for c in cols for s in ('', ' std', ' n')] +
                            ['trainable', 'activations_mb', 'step_peak_mb', 'pareto_front'])
            for name, row in rows.items():
                out = [name, settings[name].axis, setting_description(settings[name], base_csn)]
                for c in cols:
                    cell = row.get(c)
                    out += (['', '', ''] if cell is None else
                            [f'{cell[0]:.2f}', f'{cell[1]:.2f}', cell[2]])
                mem = memory[name]
                out += ([mem['trainable'], f'{mem["activations_mb"]:.3f}',
                         f'{mem["step_peak_mb"]:.3f}'] if mem else ['', '', ''])
                writer.writerow(out + [int(name in front)])
        os.replace(csv_path + '.tmp', csv_path)
        if points:
            plot_pareto(osp.join(suite_dir, 'pareto.png'), points,
                        {n: settings[n].axis for n in points},
                        'activations saved for backward, one step (MB)',
                        f'{suite}: Mean top-1 vs memory, seeds {seeds}')
    return text


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Train and test every config of a suite; write the result table.')
    parser.add_argument('suite', choices=list(SUITES))
    parser.add_argument('--data-root', help='dataset root (sets data_root of every dataloader)')
    parser.add_argument('--work-dir', default='work_dirs/suites',
                        help='runs go to <work-dir>/<suite>/<config>[/shot<k>_seed<s>]')
    parser.add_argument('--gpus', type=int,
                        help='GPUs to use: up to GPUS / GPUS_PER_RUN runs at the same time, each '
                        'on its own GPU(s) (CUDA_VISIBLE_DEVICES; the first GPUS visible '
                        'ones), each with the exact recipe of its config. Default: one run at '
                        'a time, the environment unchanged')
    parser.add_argument('--devices', nargs='+',
                        help='the device ids to use instead of --gpus, e.g. --devices 4 5 6 7')
    parser.add_argument('--gpus-per-run', type=int, default=1,
                        help='GPUs (processes) of one run; more than 1 runs tools/dist_train.sh '
                        'and tools/dist_test.sh (DDP), e.g. for ImageNet 16-shot')
    parser.add_argument('--launcher', choices=['local', 'slurm'], default='local',
                        help='slurm: every train and test is one srun job step through '
                        'tools/slurm_train.sh / tools/slurm_test.sh (GPUS=--gpus-per-run; '
                        'SRUN_ARGS and CPUS_PER_TASK from the environment), --gpus / '
                        '--gpus-per-run steps at the same time')
    parser.add_argument('--partition', help='the Slurm partition (--launcher slurm)')
    parser.add_argument('--jobs', type=int, default=1,
                        help='without GPUs: run this many runs at the same time, each with '
                        'OMP_NUM_THREADS = CPU cores / JOBS (e.g. the CPU ablations)')
    parser.add_argument('--configs', nargs='+',
                        help='run these configs instead of all of the suite')
    parser.add_argument('--shots', nargs='+', type=int,
                        help='few-shot / DG shots (default: 1 2 4 8 16 for few-shot, the '
                        "config's shot (16) for domain-generalization)")
    parser.add_argument('--seeds', nargs='+', type=int,
                        help='few-shot / DG split seeds (default: 0 1 2)')
    parser.add_argument('--val', action='store_true',
                        help='VTAB-1k validation protocol: train on train800, evaluate on '
                        'val200 (runs go to <work-dir>/<suite>_val)')
    parser.add_argument('--cfg-options', nargs='+', default=[],
                        help='KEY=VALUE options given to every train and test command')
    parser.add_argument('--dry-run', action='store_true',
                        help='print what would run and the table of finished runs')
    parser.add_argument('--verbose', action='store_true',
                        help='show the tools\' output (always written to run_suite_*.log)')
    args = parser.parse_args(argv)
    for kv in args.cfg_options:
        if '=' not in kv or not kv.split('=', 1)[0]:
            parser.error(f'--cfg-options: expected KEY=VALUE, got {kv!r}')
    kind = SUITES[args.suite][0]
    if args.val and kind not in ('vtab', 'mini-vtab', 'ablation'):
        parser.error('--val is the VTAB-1k validation protocol; few-shot and DG configs '
                     'validate on their own val split already.')
    if kind in ('vtab', 'mini-vtab') and (args.shots or args.seeds):
        parser.error('--shots/--seeds apply to the few-shot, domain-generalization and '
                     'ablation suites.')
    if kind == 'ablation' and args.shots:
        parser.error('--shots applies to the few-shot and domain-generalization suites.')
    if args.jobs < 1:
        parser.error('--jobs must be >= 1')
    if args.jobs > 1 and (args.gpus or args.devices or args.launcher == 'slurm'):
        parser.error('--jobs runs CPU runs side by side; with GPUs give --gpus or --devices')
    args.seeds = args.seeds or list(FEW_SHOT_SEEDS)
    if args.gpus is not None and args.gpus < 1:
        parser.error('--gpus must be >= 1')
    if args.gpus_per_run < 1:
        parser.error('--gpus-per-run must be >= 1')
    if args.devices and args.gpus is not None:
        parser.error('give --gpus N (the first N visible GPUs) or --devices IDS, not both')
    if args.launcher == 'slurm':
        if not args.partition:
            parser.error('--launcher slurm needs --partition (as tools/slurm_train.sh)')
        if args.devices:
            parser.error('--devices: with --launcher slurm, Slurm assigns the devices; give '
                         '--gpus (GPUs in use at a time) and --gpus-per-run')
    elif args.partition:
        parser.error('--partition is for --launcher slurm')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    configs = suite_configs(args.suite, args.configs)
    work_root = osp.abspath(args.work_dir)
    runs = plan_runs(args.suite, configs, work_root, args.shots, args.seeds, args.val,
                     args.cfg_options, args.data_root)
    suite_dir = osp.join(work_root, args.suite + ('_val' if args.val else ''))
    print(f'Suite {args.suite}: {len(runs)} run(s) of {len(configs)} config(s) in {suite_dir}',
          flush=True)
    launches = plan_launches(args)
    if len(launches) > 1:
        if args.jobs > 1:
            where = f'CPU ({launches[0].threads} thread(s) each)'
        else:
            where = ('Slurm job steps' if args.launcher == 'slurm' else
                     'devices ' + ' | '.join(','.join(launch.devices) for launch in launches))
        how = ('' if args.jobs > 1 else f' ({args.gpus_per_run} per run; devices are given to '
               'runs as they free up)')
        print(f'Up to {len(launches)} runs at the same time on {where}{how}', flush=True)
    if args.dry_run:  # in order, as the runs would start if they took equal times
        ok = [run_one(run, i, len(runs), launches[(i - 1) % len(launches)], args.verbose, True)
              for i, run in enumerate(runs, 1)]
    else:
        ok = run_on_devices(
            list(enumerate(runs, 1)), [launch.devices or () for launch in launches],
            lambda job, _, slot: run_one(job[1], job[0], len(runs), launches[slot],
                                         args.verbose, False))
    failed = [run.label for run, success in zip(runs, ok) if not success]

    md_path, csv_path = osp.join(suite_dir, 'results.md'), osp.join(suite_dir, 'results.csv')
    if SUITES[args.suite][0] == 'ablation':
        table = collect_ablation(args.suite, runs, suite_dir, write=not args.dry_run)
    else:
        table, header, rows = collect(args.suite, runs, args.seeds, args.shots)
    if not args.dry_run:
        os.makedirs(suite_dir, exist_ok=True)
        with open(md_path + '.tmp', 'w') as f:
            f.write(f'# {args.suite}\n\n{table}')
        os.replace(md_path + '.tmp', md_path)
        if SUITES[args.suite][0] != 'ablation':
            to_csv(csv_path, header, rows)
    print('\n' + table)
    if not args.dry_run:
        written = ' and '.join([md_path, csv_path] + (
            [osp.join(suite_dir, 'pareto.png')] if SUITES[args.suite][0] == 'ablation' else []))
        print(f'Written {written}')
    if failed:
        print(f'{len(failed)} run(s) failed: {", ".join(failed)}')
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
