"""Choose each demo config's learning rate on train800 -> val200.

For every method and task of the demo (``configs/demo/``) and every lr of the
method's grid, trains on ``train800`` and tests on ``val200`` (seed 0), as the
released VTAB-1k recipes were tuned per task; ``test`` is never looked at.
Where the best lr is on the grid's edge, the grid is extended by its own ratio
(up to ``--extend`` steps).
Prints and writes ``<work-dir>/sweep.md``; with ``--write`` the best lr of each
config (ties: the smaller lr) is written into the config with the grid's
val200 accuracies next to it. The logic: ``mmdtl.demo.sweep``.

Examples::

    python tools/misc/sweep_demo_lr.py --write
    python tools/misc/sweep_demo_lr.py --methods dtl+ --tasks digits --lrs 3e-3 1e-2
"""
import argparse
import os
import os.path as osp
import sys

# Set before torch is imported (see tools/misc/transfer_demo.py).
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from mmdtl.datasets.mini_vtab import MINI_VTAB_TASKS  # noqa: E402
from mmdtl.demo.runs import CHECKPOINT  # noqa: E402
from mmdtl.demo.sweep import GRIDS, sweep_demo_lrs  # noqa: E402
from mmdtl.utils.cfg_options import parse_cfg_options  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--methods', nargs='+', default=list(GRIDS), choices=list(GRIDS))
    parser.add_argument('--tasks', nargs='+', default=list(MINI_VTAB_TASKS),
                        choices=list(MINI_VTAB_TASKS))
    parser.add_argument('--lrs', nargs='+', type=float,
                        help='one grid for every method (default: the grid per method)')
    parser.add_argument('--extend', type=int, default=2,
                        help='steps to extend a grid whose best lr is on its edge')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--work-dir', default='work_dirs/demo_sweep')
    parser.add_argument('--data-root', default='data/mini-vtab')
    parser.add_argument('--fashion-mnist', dest='fashion_source')
    parser.add_argument('--checkpoint', default=CHECKPOINT,
                        help='pre-trained backbone (default: the shipped one)')
    parser.add_argument('--write', action='store_true',
                        help='write the best lr into each config')
    parser.add_argument('--force', action='store_true', help='rerun finished runs')
    parser.add_argument('--cfg-options', nargs='+', default=[])
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    sweep_demo_lrs(args.methods, args.tasks, args.lrs, args.extend, args.seed, args.work_dir,
                   args.data_root, args.fashion_source, args.checkpoint, args.write,
                   args.force, parse_cfg_options(args.cfg_options))
    return 0


if __name__ == '__main__':
    sys.exit(main())
