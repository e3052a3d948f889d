"""The dense demo: detection and segmentation, method against method, on CPU.

Every config ``configs/dense-demo/{retinanet,fcn}_vit-demo_<method>_scenes.py``
(frozen trunk, full fine-tuning, DTL, DTL+, sparse DTL+) starts from the
shipped pre-trained demo ViT (``checkpoints/demo/``), trains on the ``train``
scenes of ``tools/misc/make_dense_scenes.py`` and is tested once on ``test``:
bbox mAP / mAP50 with mmdet's ``CocoMetric``, mIoU / aAcc with mmseg's
``IoUMetric``. Each run is a real mmengine ``Runner``; after its test, one more
training step is measured (:mod:`mmdtl.demo.runs`: bytes saved for backward,
the step's tensor peak).

:func:`run_dense_demo` writes ``<work_dir>/dense_demo.md``, ``.csv`` and
``.png`` (metric vs activation memory, marker area ~ trainable parameters).
:func:`sweep_dense_lrs` chooses each config's lr instead: every lr of the
task's grid trains on ``train`` and is scored on ``val`` (seed 0; ``test`` is
never looked at); ``write`` puts the best lr (ties: the smaller) into the
config, with the grid's scores next to it. A run whose ``result.json``
matches its config, seed and backbone is reused.
"""
import os.path as osp
import re
import time
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

from mmdtl.utils.checkpoint import write_text_atomic
from mmdtl.utils.report import (
    markdown_table,
    new_figure,
    save_figure,
    write_csv,
    write_markdown,
)
from mmdtl.utils.stats import mean as _mean
from mmdtl.utils.stats import sample_std as _std

from .runs import (
    CHECKPOINT,
    REPO,
    RESULT,
    check_checkpoint,
    for_one_run,
    resolve_checkpoint,
    reuse_or_run,
    run_config,
    run_key,
    set_backbone_checkpoint,
)

METHODS = OrderedDict([
    ('frozen', 'frozen trunk'),
    ('full', 'full fine-tuning'),
    ('dtl', 'DTL'),
    ('dtl+', 'DTL+'),
    ('dtl+sparse', 'DTL+, sparse CSN'),
])
# task -> (config prefix, metric keys of the runner's test -> column names)
TASKS = OrderedDict([
    ('detection', ('retinanet', OrderedDict([('coco/bbox_mAP', 'bbox mAP'),
                                              ('coco/bbox_mAP_50', 'mAP50')]))),
    ('segmentation', ('fcn', OrderedDict([('mIoU', 'mIoU'), ('aAcc', 'aAcc')]))),
])
CONFIG = 'configs/dense-demo/{prefix}_vit-demo_{method}_scenes.py'
# One grid for every method: the neck and head start from scratch in all of
# them and take the grid's lr (full fine-tuning's trunk takes a tenth of it,
# see the configs).
GRIDS = OrderedDict([('detection', [1e-3, 3e-3, 1e-2]), ('segmentation', [3e-3, 1e-2, 3e-2])])
LR_BLOCK = re.compile(r'^# chosen on train -> val by .*?\nlr = [^\n]*\n',
                      re.MULTILINE | re.DOTALL)


def config_path(method: str, task: str) -> str:
    """The dense demo config of ``method`` on ``task``."""
    return osp.join(REPO, CONFIG.format(prefix=TASKS[task][0], method=method))


def primary(task: str) -> str:
    """The metric that ranks runs (lr sweep, plot)."""
    return next(iter(TASKS[task][1]))


def use_split(cfg, split: str) -> None:
    """Point the test loader (and the COCO metric) at ``split``."""
    dataset = cfg.test_dataloader.dataset
    for key, value in list(dataset.data_prefix.items()):
        dataset.data_prefix[key] = re.sub(r'/test(/?)$', rf'/{split}\1', value)
    if 'ann_file' in dataset:
        dataset.ann_file = dataset.ann_file.replace('_test.', f'_{split}.')
    if 'ann_file' in cfg.test_evaluator:
        cfg.test_evaluator.ann_file = cfg.test_evaluator.ann_file.replace(
            '_test.', f'_{split}.')


def load_run_config(config: str, seed: int, work_dir: str, options: Optional[dict] = None,
                    split: str = 'test', lr: Optional[float] = None,
                    checkpoint: Optional[str] = None):
    """The config of one run: trained, then tested once on ``split``.

    Args:
        config (str): The config file.
        seed (int): The run's seed.
        work_dir (str): The run's folder.
        options (dict, optional): Config overrides.
        split (str): The scenes it is tested on (``'val'`` in the sweep).
        lr (float, optional): The lr instead of the config's.
        checkpoint (str, optional): The pre-trained backbone to start from.
    """
    from mmengine.config import Config

    cfg = Config.fromfile(config)
    if options:
        cfg.merge_from_dict(options)
    if lr is not None:
        # The config's own lr (which --write changes) must not enter the run key.
        cfg.optim_wrapper.optimizer.lr = cfg.lr = lr
    if checkpoint:
        set_backbone_checkpoint(cfg, checkpoint)
    use_split(cfg, split)
    for_one_run(cfg, seed, work_dir)
    return cfg


def train_and_test(cfg, task: str, measure: bool = True) -> dict:
    """Train and test one config in this process: metrics, time, params and
    (``measure``) the memory of one more training step."""
    metrics, figures = run_config(cfg, 'dense_run.log', measure)
    missing = [k for k in TASKS[task][1] if k not in metrics]
    # CocoMetric returns nothing when no box passes the score threshold.
    if missing and (task != 'detection' or metrics):
        raise RuntimeError(f'{cfg.work_dir}: the test gave no {missing} ({metrics})')
    return dict(metrics={k: float(metrics.get(k, 0.)) for k in TASKS[task][1]}, **figures)


def run_one(method: str, task: str, seed: int, work_root: str, backbone_sha: str,
            options: Optional[dict] = None, split: str = 'test', lr: Optional[float] = None,
            force: bool = False, measure: bool = True,
            checkpoint: Optional[str] = None) -> dict:
    """One run, reused when its ``result.json`` has the same key (arguments
    as :func:`load_run_config` and :func:`mmdtl.demo.transfer.run_one`)."""
    stem = osp.basename(config_path(method, task))[:-3] + ('' if lr is None else f'_lr{lr:g}')
    work_dir = osp.join(work_root, f'seed{seed}', stem)
    cfg = load_run_config(config_path(method, task), seed, work_dir, options, split, lr,
                          checkpoint)
    key = run_key(cfg, seed, backbone_sha)
    return reuse_or_run(osp.join(work_dir, RESULT), key, measure, force, lambda: dict(
        method=method, task=task, seed=seed, key=key, split=split,
        config=osp.relpath(config_path(method, task), REPO),
        lr=cfg.optim_wrapper.optimizer.lr, **train_and_test(cfg, task, measure)))


# ----------------------------------------------------------------------------
# Table and plot (pure functions of the records)


def summarize(records: List[dict]) -> 'OrderedDict[tuple, dict]':
    """Per (task, method): every metric as ``(mean, std, n)`` over seeds and
    the cost columns (means over runs)."""
    rows = OrderedDict()
    for task in TASKS:
        for method in METHODS:
            mine = [r for r in records if r['task'] == task and r['method'] == method]
            if not mine:
                continue
            row = OrderedDict()
            for key in TASKS[task][1]:
                values = [r['metrics'][key] for r in mine]
                row[key] = (_mean(values), _std(values), len(values))
            for key in ('trainable_backbone', 'trainable_total'):
                row[key] = max(r[key] for r in mine)
            for key in ('activation_mb', 'tensor_peak_mb', 'train_s'):
                values = [r[key] for r in mine if r.get(key) is not None]
                row[key] = _mean(values) if values else None
            row['lr'] = mine[0]['lr']
            rows[(task, method)] = row
    return rows


def _cell(cell) -> str:
    mean, std, n = cell
    return f'{mean:.1f} ± {std:.1f}' if n > 1 else f'{mean:.1f}'


def percent(task: str, cell: tuple) -> tuple:
    """``(mean, std, n)`` in percent: CocoMetric reports fractions, IoUMetric
    percentages."""
    if task == 'detection':
        return tuple(v * 100 if i < 2 else v for i, v in enumerate(cell))
    return cell


def to_markdown(rows: 'OrderedDict[tuple, dict]') -> str:
    """The table of :func:`summarize`, one markdown table per task."""
    parts = []
    for task in TASKS:
        mine = [(m, r) for (t, m), r in rows.items() if t == task]
        if not mine:
            continue
        header = (['method'] + list(TASKS[task][1].values()) +
                  ['trainable (backbone)', 'trainable (all)', 'activations saved',
                   'step tensor peak', 'train time', 'lr'])
        lines = []
        for method, row in mine:
            cells = [METHODS[method]]
            cells += [_cell(percent(task, row[k])) for k in TASKS[task][1]]
            cells += [f'{row["trainable_backbone"]:,}', f'{row["trainable_total"]:,}']
            for key in ('activation_mb', 'tensor_peak_mb'):
                cells.append('-' if row[key] is None else f'{row[key]:.2f} MB')
            cells += [f'{row["train_s"]:.0f} s', f'{row["lr"]:g}']
            lines.append(cells)
        parts.append(f'**{task}**\n\n' + markdown_table(header, lines))
    return '\n'.join(parts)


def to_csv(path: str, rows: 'OrderedDict[tuple, dict]') -> None:
    """The table of :func:`summarize` as CSV, one line per task, method and metric."""
    out_rows = []
    for (task, method), row in rows.items():
        for key in TASKS[task][1]:
            mean, std, n = percent(task, row[key])
            out_rows.append([task, method, key, f'{mean:.3f}', f'{std:.3f}', n,
                             row['trainable_backbone'], row['trainable_total'],
                             '' if row['activation_mb'] is None
                             else f'{row["activation_mb"]:.3f}',
                             '' if row['tensor_peak_mb'] is None
                             else f'{row["tensor_peak_mb"]:.3f}',
                             f'{row["train_s"]:.1f}', f'{row["lr"]:g}'])
    write_csv(path, ['task', 'method', 'metric', 'mean', 'std', 'n', 'trainable_backbone',
                     'trainable_total', 'activation_mb', 'tensor_peak_mb', 'train_s', 'lr'],
              out_rows)


def plot(path: str, rows: 'OrderedDict[tuple, dict]', title: str) -> None:
    """Per task: the main metric vs activations saved for backward; marker
    area ~ trainable parameters (trunk, side network, neck and head)."""
    tasks = [t for t in TASKS if any(k[0] == t for k in rows)]
    fig, axes = new_figure(1, len(tasks), figsize=(6 * len(tasks), 4.8), squeeze=False)
    largest = max([r['trainable_total'] for r in rows.values()] + [1])
    for ax, task in zip(axes[0], tasks):
        key = primary(task)
        for (t, method), row in rows.items():
            if t != task or row['activation_mb'] is None:
                continue
            mean, std, n = percent(task, row[key])
            x = row['activation_mb']
            ax.scatter(x, mean, s=40 + 1500 * row['trainable_total'] / largest, alpha=.6)
            if n > 1:
                ax.errorbar(x, mean, yerr=std, fmt='none', ecolor='k', elinewidth=.8, capsize=3)
            ax.annotate(f'{METHODS[method]}\n{row["trainable_total"]:,} params', (x, mean),
                        textcoords='offset points', xytext=(8, -4), va='center', fontsize=7)
        ax.set_xlabel('activations saved for backward (MB, one training step, batch 8)')
        ax.set_ylabel(f'{TASKS[task][1][key]} (%)')
        ax.set_title(task, fontsize=9)
        ax.margins(x=.3, y=.15)
        ax.grid(alpha=.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


# ----------------------------------------------------------------------------
# The lr sweep


def lr_block(scores: 'OrderedDict[float, float]', best: float, metric: str) -> str:
    """The config's lr block: the grid's val scores and ``lr = best``."""
    items = ', '.join(f'{lr:g}: {score:.1f}' for lr, score in scores.items())
    return ('# chosen on train -> val by tools/misc/dense_demo.py --sweep --write\n'
            f'# (val {metric} of the grid, seed 0: {items})\n'
            f'lr = {best:g}\n')


def write_lr(config: str, scores: 'OrderedDict[float, float]', best: float,
             metric: str) -> None:
    """Replace the config's lr block (the comment and ``lr = ...``)."""
    with open(config, encoding='utf-8') as f:
        text = f.read()
    new, count = LR_BLOCK.subn(lambda _: lr_block(scores, best, metric), text)
    if count != 1:
        raise SystemExit(f'{config}: expected one "# chosen on train -> val by ..." block '
                         f'followed by "lr = ...", found {count}')
    write_text_atomic(config, new)


def best_lr(scores: 'OrderedDict[float, float]') -> float:
    """The best-scoring lr; ties go to the smaller lr."""
    return max(sorted(scores), key=lambda lr: (scores[lr], -lr))


def prepare(checkpoint: str = CHECKPOINT, data_root: str = 'data/dense-scenes') -> str:
    """Check the backbone, write the scenes when missing; the backbone's SHA-256."""
    import mmdtl  # noqa: F401  (registries)
    from mmdtl.datasets.dense_scenes import write_dense_scenes

    sha = check_checkpoint(checkpoint)
    # Written once; the datasets check the files against their annotations
    # when they load.
    if not osp.isfile(osp.join(data_root, 'meta.json')):
        try:
            write_dense_scenes(data_root)
        except FileNotFoundError as e:
            raise SystemExit(str(e)) from e
    return sha


def task_options(task: str, data_root: str, options: dict) -> dict:
    """``options`` plus the data root of ``task``'s loaders (and of the COCO
    metric, which reads the test annotations itself)."""
    merged = {f'{loader}.dataset.data_root': data_root
              for loader in ('train_dataloader', 'test_dataloader')}
    if task == 'detection':
        merged['test_evaluator.ann_file'] = f'{data_root}/annotations/instances_test.json'
    merged.update(options)
    return merged


def _check(methods, tasks) -> None:
    unknown = [m for m in methods if m not in METHODS] + [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f'dense demo: unknown method(s) or task(s) {unknown}; methods are '
                         f'{list(METHODS)}, tasks {list(TASKS)}')


def sweep_dense_lrs(methods: Optional[Sequence[str]] = None,
                    tasks: Optional[Sequence[str]] = None,
                    work_dir: str = 'work_dirs/dense_demo',
                    data_root: str = 'data/dense-scenes', checkpoint: str = CHECKPOINT,
                    write: bool = False, force: bool = False,
                    cfg_options: Optional[dict] = None) -> 'OrderedDict[tuple, OrderedDict]':
    """Choose the lrs (``tools/misc/dense_demo.py --sweep``): every lr of each
    task's grid, train -> val, seed 0; prints and writes
    ``<work_dir>_sweep/sweep.md``.

    Args:
        methods (Sequence[str], optional): Keys of :data:`METHODS` (default: all).
        tasks (Sequence[str], optional): Keys of :data:`TASKS` (default: both).
        work_dir (str): Runs go to ``<work_dir>_sweep``.
        data_root (str): The scenes (written there when missing).
        checkpoint (str): The pre-trained backbone (default: the shipped one).
        write (bool): Write the best lr into each config.
        force (bool): Rerun finished runs.
        cfg_options (dict, optional): Config overrides of every run.

    Returns:
        OrderedDict: ``{(task, method): {lr: val score (%)}}``.
    """
    methods, tasks = list(methods or METHODS), list(tasks or TASKS)
    _check(methods, tasks)
    sha = prepare(checkpoint, data_root)
    options = dict(cfg_options or {})
    work_root = osp.abspath(work_dir) + '_sweep'
    plan = [(m, t, lr) for t in tasks for m in methods for lr in GRIDS[t]]
    print(f'Sweep: {len(plan)} runs (train -> val, seed 0); logs in {work_root}', flush=True)
    start = time.time()
    scores: Dict[tuple, 'OrderedDict[float, float]'] = OrderedDict()
    for i, (method, task, lr) in enumerate(plan, 1):
        record = run_one(method, task, 0, work_root, sha,
                         task_options(task, data_root, options), 'val', lr, force,
                         measure=False, checkpoint=resolve_checkpoint(checkpoint))
        score = percent(task, (record['metrics'][primary(task)], 0, 1))[0]
        scores.setdefault((task, method), OrderedDict())[lr] = score
        print(f'[{i:2d}/{len(plan)}] {task:12s} {method:10s} lr {lr:<7g} val '
              f'{TASKS[task][1][primary(task)]} {score:5.1f}  ({time.time() - start:.0f} s '
              'elapsed)', flush=True)
    rows = []
    for (task, method), grid in scores.items():
        best = best_lr(grid)
        rows.append([task, method, ', '.join(f'{lr:g}: {s:.1f}' for lr, s in grid.items()),
                     f'{best:g}'])
        if write:
            write_lr(config_path(method, task), grid, best, TASKS[task][1][primary(task)])
    table = markdown_table(['task', 'method', 'val score per lr', 'best'], rows)
    write_markdown(osp.join(work_root, 'sweep.md'), table)
    print('\n' + table + ('\nWrote the best lrs into the configs.' if write else ''))
    return scores


def run_dense_demo(methods: Optional[Sequence[str]] = None,
                   tasks: Optional[Sequence[str]] = None, seeds: Sequence[int] = (0, ),
                   work_dir: str = 'work_dirs/dense_demo', data_root: str = 'data/dense-scenes',
                   checkpoint: str = CHECKPOINT, force: bool = False,
                   cfg_options: Optional[dict] = None) -> 'OrderedDict[tuple, dict]':
    """Run the dense demo (``make demo-dense``, ``tools/misc/dense_demo.py``)
    and write its table, CSV and plot.

    Args:
        methods (Sequence[str], optional): Keys of :data:`METHODS` (default: all).
        tasks (Sequence[str], optional): ``'detection'``, ``'segmentation'``
            (default: both).
        seeds (Sequence[int]): Seeds; each (seed, task, method) is one run.
        work_dir (str): Runs and ``dense_demo.md`` / ``.csv`` / ``.png`` go there.
        data_root (str): The scenes (written there when missing).
        checkpoint (str): The pre-trained backbone (default: the shipped one).
        force (bool): Rerun finished runs.
        cfg_options (dict, optional): Config overrides of every run, e.g.
            ``{'train_cfg.max_epochs': 1}``.

    Returns:
        OrderedDict: Per ``(task, method)`` the row of the table
        (:func:`summarize`): every metric ``(mean, std, n)`` over seeds as the
        runner reports it (CocoMetric: fractions), ``trainable_backbone``,
        ``trainable_total``, ``activation_mb``, ``tensor_peak_mb``,
        ``train_s``, ``lr``.
    """
    methods, tasks, seeds = list(methods or METHODS), list(tasks or TASKS), list(seeds)
    _check(methods, tasks)
    sha = prepare(checkpoint, data_root)
    options = dict(cfg_options or {})
    work_root = osp.abspath(work_dir)
    plan = [(s, t, m) for s in seeds for t in tasks for m in methods]
    print(f'Dense demo: {len(plan)} runs ({len(methods)} methods x {len(tasks)} '
          f'tasks x {len(seeds)} seed(s)) from {checkpoint} (sha256 {sha[:12]}...), '
          f'train -> test; logs in {work_root}', flush=True)
    start = time.time()
    records = []
    for i, (seed, task, method) in enumerate(plan, 1):
        record = run_one(method, task, seed, work_root, sha,
                         task_options(task, data_root, options), force=force,
                         checkpoint=resolve_checkpoint(checkpoint))
        records.append(record)
        done = 'reused' if record.get('reused') else f'train {record["train_s"]:.0f} s'
        metrics = ', '.join(f'{name} {percent(task, (record["metrics"][k], 0, 1))[0]:.1f}'
                            for k, name in TASKS[task][1].items())
        print(f'[{i:2d}/{len(plan)}] seed {seed} {task:12s} {method:10s} {metrics}  ({done}; '
              f'{time.time() - start:.0f} s elapsed)', flush=True)

    rows = summarize(records)
    title = (f'Dense demo scenes, test split: ViT 6x96 pre-trained on Fashion-MNIST, '
             f'seeds {seeds}')
    table = to_markdown(rows)
    notes = ('± = std over seeds. bbox mAP / mAP50: mmdet CocoMetric; mIoU / aAcc: mmseg '
             'IoUMetric (background included). Trainable: backbone (trunk + side network) and '
             'all (with neck and head). Memory of one training step, batch 8, CPU fp32: bytes '
             "saved for backward (parameters excluded) and the step's tensor peak; train time "
             'per run, mean over seeds.')
    write_markdown(osp.join(work_root, 'dense_demo.md'), f'# {title}\n\n{table}\n{notes}\n')
    to_csv(osp.join(work_root, 'dense_demo.csv'), rows)
    plot(osp.join(work_root, 'dense_demo.png'), rows,
         f'Dense demo: metric vs training memory (marker area ~ trainable parameters), '
         f'seeds {seeds}')
    print(f'\n{title}\n\n{table}\n{notes}\n')
    print(f'Wrote {work_root}/dense_demo.md, .csv and .png in '
          f'{(time.time() - start) / 60:.1f} min', flush=True)
    return rows
