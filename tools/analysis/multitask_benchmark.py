"""Cost of K DTL tasks on one shared frozen backbone vs K separate models.

Writes ``multitask_benchmark.md`` and ``multitask_benchmark.csv`` under ``--work-dir``.
What it measures and how (FLOPs, wall time, logit differences of K tasks on one
:class:`MultiTaskDTL` against K separate models) is said in
``mmdtl.analysis.multitask_benchmark``, which does the work; this script parses the command
line.

Example::

    python tools/analysis/multitask_benchmark.py --batch-size 4
    python tools/analysis/multitask_benchmark.py --arch swin-b --batch-size 4
    python tools/analysis/multitask_benchmark.py --device cuda --batch-size 32
    python tools/analysis/multitask_benchmark.py --tiny --work-dir /tmp/mtb
"""
import argparse
import sys

import torch

from mmdtl.analysis.multitask_benchmark import ARCHS, run_benchmark, write_outputs


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--arch', default='vit-b', choices=sorted(ARCHS))
    parser.add_argument('--tiny', action='store_true', help='shortcut for --arch vit-tiny')
    parser.add_argument('--tasks', type=int, nargs='+', default=[1, 2, 5, 10])
    parser.add_argument('--batch-size', type=int, default=4)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--work-dir', default='work_dirs/multitask_benchmark')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--num-threads', type=int, default=None,
                        help='CPU threads of torch (default: torch\'s choice)')
    args = parser.parse_args(argv)
    if args.tiny:
        args.arch = 'vit-tiny'
    if min(args.tasks) < 1:
        parser.error('--tasks must be >= 1')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import mmdtl  # noqa: F401  (registers DTLViT, DTLSwin, MultiTaskDTL)

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    rows = run_benchmark(args.arch, args.tasks, batch_size=args.batch_size, device=args.device,
                         warmup=args.warmup, repeats=args.repeats, seed=args.seed)
    print(write_outputs(args.work_dir, rows, args.arch, args.batch_size, args.device))
    print(f'[multitask_benchmark] wrote {args.work_dir}/multitask_benchmark.{{md,csv}}')
    return 0 if all(r['within_target'] for r in rows) else 1


if __name__ == '__main__':
    sys.exit(main())
