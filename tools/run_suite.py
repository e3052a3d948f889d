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
import os.path as osp
import sys

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from mmdtl.datasets.few_shot import FEW_SHOT_SEEDS  # noqa: E402
from mmdtl.suites.collect import suite_table  # noqa: E402
from mmdtl.suites.definitions import SUITES, SuiteError, plan_runs, suite_configs, suite_dir  # noqa: E402
from mmdtl.suites.launch import plan_launches  # noqa: E402
from mmdtl.suites.run_pool import run_on_devices  # noqa: E402
from mmdtl.suites.runner import run_one  # noqa: E402


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
    try:
        return run(args)
    except SuiteError as e:
        raise SystemExit(str(e)) from e


def run(args) -> int:
    configs = suite_configs(args.suite, args.configs)
    work_root = osp.abspath(args.work_dir)
    runs = plan_runs(args.suite, configs, work_root, args.shots, args.seeds, args.val,
                     args.cfg_options, args.data_root)
    folder = suite_dir(work_root, args.suite, args.val)
    print(f'Suite {args.suite}: {len(runs)} run(s) of {len(configs)} config(s) in {folder}',
          flush=True)
    launches = plan_launches(args.gpus_per_run, args.launcher, args.partition, args.gpus,
                             args.devices, args.jobs, args.dry_run)
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

    table = suite_table(args.suite, runs, folder, args.seeds, args.shots,
                        write=not args.dry_run)
    print('\n' + table)
    if not args.dry_run:
        ablation = SUITES[args.suite][0] == 'ablation'
        written = ' and '.join(
            [osp.join(folder, 'results.md'), osp.join(folder, 'results.csv')] +
            ([osp.join(folder, 'pareto.png')] if ablation else []))
        print(f'Written {written}')
    if failed:
        print(f'{len(failed)} run(s) failed: {", ".join(failed)}')
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
