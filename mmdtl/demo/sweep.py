"""Choose each demo config's learning rate on train800 -> val200.

For every method and task of the demo (``configs/demo/``) and every lr of the
method's grid, :func:`sweep_demo_lrs` trains on ``train800`` and tests on
``val200`` (one seed), as the released VTAB-1k recipes were tuned per task;
``test`` is never looked at. Where the best lr is on the grid's edge, the
grid is extended by its own ratio. With ``write`` the best lr of each config
(ties: the smaller lr) is written into the config with the grid's val200
accuracies next to it.
"""
import os.path as osp
import re
import time
from collections import OrderedDict
from typing import Optional, Sequence

from mmdtl.datasets.mini_vtab import MINI_VTAB_TASKS
from mmdtl.utils.checkpoint import write_text_atomic
from mmdtl.utils.report import markdown_table, write_markdown

from .runs import CHECKPOINT, resolve_checkpoint
from .transfer import config_path, data_options, prepare, run_one

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
    """The config's lr block: the grid's val200 accuracies and ``lr = best``."""
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
    with open(config, encoding='utf-8') as f:
        text = f.read()
    new, count = LR_BLOCK.subn(lambda _: lr_block(grid_results, best), text)
    if count != 1:
        raise SystemExit(f'{config}: expected one block starting "# chosen on train800 -> '
                         f'val200 by" and ending with "lr = ...", found {count}.')
    write_text_atomic(config, new)


def best_lr(grid_results: 'OrderedDict[float, float]') -> float:
    """The lr of the best accuracy; ties go to the smaller lr."""
    top = max(grid_results.values())
    return min(lr for lr, top1 in grid_results.items() if top1 == top)


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


def sweep_demo_lrs(methods: Optional[Sequence[str]] = None,
                   tasks: Optional[Sequence[str]] = None,
                   lrs: Optional[Sequence[float]] = None, extend: int = 2, seed: int = 0,
                   work_dir: str = 'work_dirs/demo_sweep', data_root: str = 'data/mini-vtab',
                   fashion_source: Optional[str] = None, checkpoint: str = CHECKPOINT,
                   write: bool = False, force: bool = False,
                   cfg_options: Optional[dict] = None) -> 'OrderedDict[tuple, OrderedDict]':
    """Sweep the demo's lrs (``tools/misc/sweep_demo_lr.py``); prints and
    writes ``<work_dir>/sweep.md``.

    Args:
        methods (Sequence[str], optional): Keys of :data:`GRIDS` (default: all).
        tasks (Sequence[str], optional): Mini VTAB-1k tasks (default: all).
        lrs (Sequence[float], optional): One grid for every method (default:
            the grid per method).
        extend (int): Steps to extend a grid whose best lr is on its edge.
        seed (int): The runs' seed.
        work_dir (str): Runs go to ``<work_dir>/lr<lr>/``.
        data_root (str): The mini VTAB-1k (written there when missing).
        fashion_source (str, optional): The Fashion-MNIST files' folder.
        checkpoint (str): The pre-trained backbone (default: the shipped one).
        write (bool): Write the best lr into each config.
        force (bool): Rerun finished runs.
        cfg_options (dict, optional): Config overrides of every run.

    Returns:
        OrderedDict: ``{(method, task): {lr: val200 top-1}}``.
    """
    methods = list(methods or GRIDS)
    tasks = list(tasks or MINI_VTAB_TASKS)
    sha = prepare(checkpoint, data_root, fashion_source)
    base = data_options(data_root)
    base.update(cfg_options or {})
    pairs = [(m, t) for m in methods for t in tasks]
    print(f'lr sweep: {len(pairs)} configs on train800 -> val200, grids extended up to '
          f'{extend} step(s) where the best lr is on an edge', flush=True)
    results = OrderedDict()
    start = time.time()
    count = 0
    for method, task in pairs:
        grid = results.setdefault((method, task), OrderedDict())
        todo = list(lrs or GRIDS[method])
        extended = 0
        while todo:
            lr = float(f'{todo.pop(0):.3g}')
            # the config's own `lr` variable too, so a run's key does not
            # depend on what --write recorded there before
            options = dict(base, **{'optim_wrapper.optimizer.lr': lr, 'lr': lr})
            record = run_one(method, task, seed, osp.join(work_dir, f'lr{lr:g}'), sha, options,
                             val=True, force=force, measure=False,
                             checkpoint=resolve_checkpoint(checkpoint))
            grid[lr] = record['top1']
            count += 1
            print(f'[{count:2d}] {method:16s} {task:10s} lr {lr:<7g} val200 top-1 '
                  f'{record["top1"]:5.1f} %  ({time.time() - start:.0f} s elapsed)', flush=True)
            if not todo and extended < extend:
                more = next_lr(grid)
                if more is not None:
                    todo.append(more)
                    extended += 1
        results[method, task] = OrderedDict(sorted(grid.items()))

    rows = []
    for (method, task), grid in results.items():
        best = best_lr(grid)
        scores = ', '.join(f'{lr:g}: {top1:.1f}' for lr, top1 in grid.items())
        rows.append([method, task, scores, f'{best:g}'])
        if write:
            write_lr(config_path(method, task), grid, best)
    table = markdown_table(['method', 'task', 'val200 top-1 per lr', 'best lr'], rows)
    write_markdown(osp.join(work_dir, 'sweep.md'), table)
    print('\n' + table)
    if write:
        print(f'Wrote the best lr into {len(results)} config(s) under configs/demo/')
    return results
