"""Choose each demo config's learning rate on train800 -> val200.

For every method and task of the demo (``configs/demo/``) and every lr of the
method's grid, trains on ``train800`` and tests on ``val200`` (seed 0), as the
released VTAB-1k recipes were tuned per task; ``test`` is never looked at.
Where the best lr is on the grid's edge, the grid is extended by its own ratio
(up to ``--extend`` steps).
Prints and writes ``<work-dir>/sweep.md``; with ``--write`` the best lr of each
config (ties: the smaller lr) is written into the config with the grid's
val200 accuracies next to it.

Examples::

    python tools/misc/sweep_demo_lr.py --write
    python tools/misc/sweep_demo_lr.py --methods dtl+ --tasks digits --lrs 3e-3 1e-2
"""
import argparse
import os.path as osp
import re
import sys
import time
from collections import OrderedDict
from typing import Optional

sys.path.insert(0, osp.dirname(osp.abspath(__file__)))
import transfer_demo as demo  # noqa: E402

# The released recipes' range scaled to a 96-dim model: larger steps for the
# few parameters of a head or a side network, smaller for the whole trunk.
GRIDS = OrderedDict([
    ('linear', [3e-3, 1e-2, 3e-2]),
    ('full', [1e-4, 3e-4, 1e-3]),
    ('lora', [1e-3, 3e-3, 1e-2]),
    ('dtl', [3e-3, 1e-2, 3e-2]),
    ('dtl+', [3e-3, 1e-2, 3e-2]),
    ('dtl+random-trunk', [3e-3, 1e-2, 3e-2]),
])
LR_BLOCK = re.compile(r'^# chosen on train800 -> val200 by .*?\nlr = [^\n]*\n',
                      re.MULTILINE | re.DOTALL)


def lr_block(grid_results: 'OrderedDict[float, float]', best: float) -> str:
    comment = ['(val200 top-1 of the grid, seed 0:']
    for i, (lr, top1) in enumerate(grid_results.items()):
        item = f'{lr:g}: {top1:.1f}' + (')' if i == len(grid_results) - 1 else ',')
        if len(comment[-1]) + len(item) > 94:
            comment.append(item)
        else:
            comment[-1] += ' ' + item
    return ('# chosen on train800 -> val200 by tools/misc/sweep_demo_lr.py --write\n' +
            ''.join(f'# {line}\n' for line in comment) + f'lr = {best:g}\n')


def write_lr(config: str, grid_results: 'OrderedDict[float, float]', best: float) -> None:
    """Replace the config's lr block (the comment and ``lr = ...``)."""
    from mmdtl.utils.checkpoint import _write_text_atomic

    with open(config, encoding='utf-8') as f:
        text = f.read()
    new, count = LR_BLOCK.subn(lambda _: lr_block(grid_results, best), text)
    if count != 1:
        raise SystemExit(f'{config}: expected one block starting "# chosen on train800 -> '
                         f'val200 by" and ending with "lr = ...", found {count}.')
    _write_text_atomic(config, new)


def best_lr(grid_results: 'OrderedDict[float, float]') -> float:
    top = max(grid_results.values())
    return min(lr for lr, top1 in grid_results.items() if top1 == top)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--methods', nargs='+', default=list(GRIDS), choices=list(GRIDS))
    parser.add_argument('--tasks', nargs='+', default=list(demo.MINI_VTAB_TASKS),
                        choices=list(demo.MINI_VTAB_TASKS))
    parser.add_argument('--lrs', nargs='+', type=float,
                        help='one grid for every method (default: the grid per method)')
    parser.add_argument('--extend', type=int, default=2,
                        help='steps to extend a grid whose best lr is on its edge')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--work-dir', default='work_dirs/demo_sweep')
    parser.add_argument('--data-root', default='data/mini-vtab')
    parser.add_argument('--fashion-mnist', dest='fashion_source')
    parser.add_argument('--checkpoint', default=demo.CHECKPOINT,
                        help='pre-trained backbone (default: the shipped one)')
    parser.add_argument('--write', action='store_true',
                        help='write the best lr into each config')
    parser.add_argument('--force', action='store_true', help='rerun finished runs')
    parser.add_argument('--cfg-options', nargs='+', default=[])
    return parser.parse_args(argv)


def next_lr(grid: 'OrderedDict[float, float]') -> Optional[float]:
    """One more step beyond the grid's edge when the best lr lies on it (the
    grid's own ratio), else None."""
    lrs = sorted(grid)
    if len(lrs) < 2:
        return None
    best = best_lr(grid)
    if best == lrs[-1]:
        return lrs[-1] * lrs[-1] / lrs[-2]
    if best == lrs[0]:
        return lrs[0] * lrs[0] / lrs[1]
    return None


def main(argv=None) -> int:
    args = parse_args(argv)
    sha = demo.prepare(args)
    base = demo.data_options(args.data_root)
    base.update(demo.parse_cfg_options(args.cfg_options))
    pairs = [(m, t) for m in args.methods for t in args.tasks]
    print(f'lr sweep: {len(pairs)} configs on train800 -> val200, grids extended up to '
          f'{args.extend} step(s) where the best lr is on an edge', flush=True)
    results = OrderedDict()
    start = time.time()
    count = 0
    for method, task in pairs:
        grid = results.setdefault((method, task), OrderedDict())
        todo = list(args.lrs or GRIDS[method])
        extended = 0
        while todo:
            lr = float(f'{todo.pop(0):.3g}')
            # the config's own `lr` variable too, so a run's key does not
            # depend on what --write recorded there before
            options = dict(base, **{'optim_wrapper.optimizer.lr': lr, 'lr': lr})
            record = demo.run_one(method, task, args.seed,
                                  osp.join(args.work_dir, f'lr{lr:g}'), sha, options,
                                  val=True, force=args.force, measure=False,
                                  checkpoint=osp.abspath(args.checkpoint))
            grid[lr] = record['top1']
            count += 1
            print(f'[{count:2d}] {method:16s} {task:10s} lr {lr:<7g} val200 top-1 '
                  f'{record["top1"]:5.1f} %  ({time.time() - start:.0f} s elapsed)', flush=True)
            if not todo and extended < args.extend:
                more = next_lr(grid)
                if more is not None:
                    todo.append(more)
                    extended += 1
        results[method, task] = OrderedDict(sorted(grid.items()))

    lines = ['| method | task | val200 top-1 per lr | best lr |', '|---|---|---|---|']
    for (method, task), grid in results.items():
        best = best_lr(grid)
        scores = ', '.join(f'{lr:g}: {top1:.1f}' for lr, top1 in grid.items())
        lines.append(f'| {method} | {task} | {scores} | {best:g} |')
        if args.write:
            write_lr(demo.config_path(method, task), grid, best)
    table = '\n'.join(lines) + '\n'
    from mmdtl.utils.checkpoint import _write_text_atomic
    _write_text_atomic(osp.join(args.work_dir, 'sweep.md'), table)
    print('\n' + table)
    if args.write:
        print(f'Wrote the best lr into {len(results)} config(s) under configs/demo/')
    return 0


if __name__ == '__main__':
    sys.exit(main())
