"""The demo: transfer of a pre-trained ViT, method against method, on CPU.

Every config ``configs/demo/vit-demo_<method>_<task>.py`` (linear probe, full
fine-tuning, LoRA, DTL, DTL+, and DTL+ on a randomly initialised trunk as the
control) is trained on ``train800val200`` and tested on ``test`` of the mini
VTAB-1k (``mmdtl/datasets/mini_vtab.py``), starting from the shipped backbone
``checkpoints/demo/vit-demo_fashion-mnist.pth``, each run in this process
with the memory of one training step measured (:mod:`mmdtl.demo.runs`).

:func:`run_demo` writes ``<work_dir>/demo.md``, ``demo.csv`` and ``demo.png``
(mean accuracy vs training memory, marker area ~ trainable parameters: the
paper's Figure 1). A run whose ``result.json`` matches its config, seed and
backbone is reused; ``force`` reruns everything.
"""
import os.path as osp
import time
from collections import OrderedDict
from typing import List, Optional, Sequence

from mmdtl.datasets.mini_vtab import MINI_VTAB_GROUPS, MINI_VTAB_TASKS
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

# method -> label of the tables, in table order
METHODS = OrderedDict([
    ('linear', 'linear probe'),
    ('full', 'full fine-tuning'),
    ('lora', 'LoRA (qkv, r=8)'),
    ('dtl', 'DTL'),
    ('dtl+', 'DTL+'),
    ('dtl+random-trunk', 'DTL+, random trunk (control)'),
])
CONFIG = 'configs/demo/vit-demo_{method}_{task}.py'
VAL_OPTIONS = {
    'train_dataloader.dataset.split': 'train800',
    'test_dataloader.dataset.split': 'val200',
}


def config_path(method: str, task: str) -> str:
    """The demo config of ``method`` on ``task``."""
    return osp.join(REPO, CONFIG.format(method=method, task=task))


def load_run_config(config: str, seed: int, work_dir: str, options: Optional[dict] = None,
                    val: bool = False, checkpoint: Optional[str] = None):
    """The config of one demo run: trained, then tested once (no validation
    during training, no checkpoints written).

    Args:
        config (str): The config file.
        seed (int): The run's seed.
        work_dir (str): The run's folder.
        options (dict, optional): Config overrides (``{'key.path': value}``).
        val (bool): Train on train800 and test on val200.
        checkpoint (str, optional): The pre-trained backbone to start from.
    """
    from mmengine.config import Config

    cfg = Config.fromfile(config)
    merged = dict(VAL_OPTIONS) if val else {}
    merged.update(options or {})
    if merged:
        cfg.merge_from_dict(merged)
    if checkpoint:
        set_backbone_checkpoint(cfg, checkpoint)
    for_one_run(cfg, seed, work_dir)
    return cfg


def train_and_test(cfg, measure: bool = True) -> dict:
    """Train and test one config in this process; accuracy, time, params,
    and (``measure``) the memory of a training step."""
    metrics, figures = run_config(cfg, 'demo_run.log', measure)
    return dict(top1=float(metrics['accuracy/top1']), **figures)


def run_one(method: str, task: str, seed: int, work_root: str, backbone_sha: str,
            options: Optional[dict] = None, val: bool = False, force: bool = False,
            measure: bool = True, checkpoint: Optional[str] = None) -> dict:
    """One run, reused when its ``result.json`` has the same key.

    Args:
        method (str): A key of :data:`METHODS`.
        task (str): A mini VTAB-1k task.
        seed (int): The run's seed.
        work_root (str): The run goes to ``<work_root>/seed<seed>/<config>``.
        backbone_sha (str): The backbone's SHA-256 (part of the run's key).
        options (dict, optional): Config overrides.
        val (bool): Train on train800 and test on val200.
        force (bool): Rerun a finished run.
        measure (bool): Measure the memory of a training step.
        checkpoint (str, optional): The pre-trained backbone to start from.
    """
    stem = osp.basename(config_path(method, task))[:-3]
    work_dir = osp.join(work_root, f'seed{seed}', stem)
    cfg = load_run_config(config_path(method, task), seed, work_dir, options, val, checkpoint)
    key = run_key(cfg, seed, backbone_sha)
    return reuse_or_run(osp.join(work_dir, RESULT), key, measure, force, lambda: dict(
        method=method, task=task, seed=seed, key=key,
        config=osp.relpath(config_path(method, task), REPO),
        lr=cfg.optim_wrapper.optimizer.lr, **train_and_test(cfg, measure)))


# ----------------------------------------------------------------------------
# Table and plot (pure functions of the records)


def summarize(records: List[dict], tasks: Sequence[str]) -> 'OrderedDict[str, dict]':
    """Per method: per task, per group and overall mean top-1 as
    ``(mean, std, n)`` over seeds, and the cost columns.

    A group mean (and ``Mean``, the mean of the group means, VTAB's
    convention) is computed per seed, then averaged; it needs every task of
    the group (every group) in ``tasks``.
    """
    rows = OrderedDict()
    methods = [m for m in METHODS if any(r['method'] == m for r in records)]
    methods += sorted({r['method'] for r in records} - set(methods))
    groups = OrderedDict((g, ts) for g, ts in MINI_VTAB_GROUPS.items()
                         if all(t in tasks for t in ts))
    for method in methods:
        mine = [r for r in records if r['method'] == method]
        seeds = sorted({r['seed'] for r in mine})
        by_seed = {s: {r['task']: r['top1'] for r in mine if r['seed'] == s} for s in seeds}
        row = OrderedDict()
        for task in tasks:
            values = [by_seed[s][task] for s in seeds if task in by_seed[s]]
            row[task] = (_mean(values), _std(values), len(values)) if values else None
        complete = [s for s in seeds if all(t in by_seed[s] for t in tasks)]
        for group, group_tasks in groups.items():
            values = [_mean([by_seed[s][t] for t in group_tasks]) for s in complete]
            row[group] = (_mean(values), _std(values), len(values)) if values else None
        if len(groups) == len(MINI_VTAB_GROUPS) and complete:
            values = [_mean([_mean([by_seed[s][t] for t in ts]) for ts in groups.values()])
                      for s in complete]
            row['mean'] = (_mean(values), _std(values), len(values))
        else:
            row['mean'] = None
        row['trainable_backbone'] = max(r['trainable_backbone'] for r in mine)
        for key in ('activation_mb', 'tensor_peak_mb', 'train_s'):
            values = [r[key] for r in mine if r.get(key) is not None]
            row[key] = _mean(values) if values else None
        row['seeds'] = len(seeds)
        rows[method] = row
    return rows


def _cell(cell) -> str:
    if cell is None:
        return '-'
    mean, std, n = cell
    return f'{mean:.1f} ± {std:.1f}' if n > 1 else f'{mean:.1f}'


def _groups(tasks: Sequence[str]) -> List[str]:
    return [g for g in MINI_VTAB_GROUPS if all(t in tasks for t in MINI_VTAB_GROUPS[g])]


def to_markdown(rows: 'OrderedDict[str, dict]', tasks: Sequence[str]) -> str:
    """The table of :func:`summarize` as markdown."""
    groups = _groups(tasks)
    header = (['method'] + list(tasks) + [g.capitalize() for g in groups] +
              ['Mean', 'trainable (backbone)', 'activations saved', 'step tensor peak',
               'train time / task'])
    lines = []
    for method, row in rows.items():
        cells = [METHODS.get(method, method)] + [_cell(row[t]) for t in tasks]
        cells += [_cell(row[g]) for g in groups] + [_cell(row['mean'])]
        cells.append(f'{row["trainable_backbone"]:,}')
        for key, unit in (('activation_mb', 'MB'), ('tensor_peak_mb', 'MB')):
            cells.append('-' if row[key] is None else f'{row[key]:.2f} {unit}')
        cells.append(f'{row["train_s"]:.1f} s')
        lines.append(cells)
    return markdown_table(header, lines)


def to_csv(path: str, rows: 'OrderedDict[str, dict]', tasks: Sequence[str]) -> None:
    """The table of :func:`summarize` as CSV (mean, std and n per cell)."""
    cols = list(tasks) + _groups(tasks) + ['mean']
    out_rows = []
    for method, row in rows.items():
        out = [method]
        for c in cols:
            out += ['', '', ''] if row[c] is None else [f'{row[c][0]:.2f}',
                                                         f'{row[c][1]:.2f}', row[c][2]]
        out += [row['trainable_backbone']] + [
            '' if row[k] is None else f'{row[k]:.3f}'
            for k in ('activation_mb', 'tensor_peak_mb', 'train_s')]
        out_rows.append(out)
    write_csv(path, ['method'] + [f'{c}{s}' for c in cols for s in ('', '_std', '_n')] +
              ['trainable_backbone', 'activation_mb', 'tensor_peak_mb', 'train_s'], out_rows)


def plot(path: str, rows: 'OrderedDict[str, dict]', title: str) -> None:
    """Mean top-1 vs the step's tensor peak; marker area ~ trainable params."""
    points = [(m, r) for m, r in rows.items()
              if r['tensor_peak_mb'] is not None and (r['mean'] or _first_cell(r))]
    largest = max([r['trainable_backbone'] for _, r in points] + [1])
    span = max([r['tensor_peak_mb'] for _, r in points] + [1])
    fig, ax = new_figure(figsize=(7, 5))
    # methods at about the same memory (the DTL variants): labels alternate sides
    in_column, left = {}, {}
    for method, row in sorted(points, key=lambda p: -(p[1]['mean'] or _first_cell(p[1]))[0]):
        column = round(row['tensor_peak_mb'] / (0.05 * span))
        left[method] = in_column.get(column, 0) % 2 == 1
        in_column[column] = in_column.get(column, 0) + 1
    for method, row in points:
        mean, std, n = row['mean'] or _first_cell(row)
        x, label = row['tensor_peak_mb'], METHODS.get(method, method)
        ax.scatter(x, mean, s=40 + 1500 * row['trainable_backbone'] / largest, alpha=.6,
                   label=label)
        if n > 1:
            ax.errorbar(x, mean, yerr=std, fmt='none', ecolor='k', elinewidth=.8, capsize=3)
        ax.annotate(f'{label}\n{row["trainable_backbone"]:,} params', (x, mean),
                    textcoords='offset points', xytext=(-10 if left[method] else 10, -4),
                    ha='right' if left[method] else 'left', va='center', fontsize=7)
    ax.set_xlabel('training step tensor peak (MB, CPU, batch 32)')
    ax.set_ylabel('mean top-1 (%)' if points and points[0][1]['mean'] else 'top-1 (%)')
    ax.set_title(title, fontsize=9)
    ax.margins(x=.25, y=.12)  # room for the labels and the largest marker
    ax.grid(alpha=.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def _first_cell(row: dict):
    return next((v for k, v in row.items() if k in MINI_VTAB_TASKS and v is not None), None)


# ----------------------------------------------------------------------------


def prepare(checkpoint: str = CHECKPOINT, data_root: str = 'data/mini-vtab',
            fashion_source: Optional[str] = None) -> str:
    """Check the backbone, write the tasks; the backbone's SHA-256."""
    import mmdtl  # noqa: F401  (registries)
    from mmdtl.datasets.mini_vtab import write_mini_vtab

    sha = check_checkpoint(checkpoint)
    try:
        write_mini_vtab(data_root, fashion_source)
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from e
    return sha


def data_options(data_root: str) -> dict:
    """The data root of every dataloader as config overrides."""
    return {f'{loader}.dataset.data_root': data_root
            for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')}


def run_demo(methods: Optional[Sequence[str]] = None, tasks: Optional[Sequence[str]] = None,
             seeds: Sequence[int] = (0, ), work_dir: str = 'work_dirs/demo',
             data_root: str = 'data/mini-vtab', fashion_source: Optional[str] = None,
             checkpoint: str = CHECKPOINT, val: bool = False, force: bool = False,
             cfg_options: Optional[dict] = None) -> 'OrderedDict[str, dict]':
    """Run the demo (``make demo``, ``tools/misc/transfer_demo.py``) and
    write its table, CSV and plot.

    Args:
        methods (Sequence[str], optional): Keys of :data:`METHODS`
            (default: all).
        tasks (Sequence[str], optional): Mini VTAB-1k tasks (default: all).
        seeds (Sequence[int]): Seeds; each (seed, method, task) is one run.
        work_dir (str): Runs and ``demo.md`` / ``.csv`` / ``.png`` go
            there (``<work_dir>_val`` with ``val``).
        data_root (str): The mini VTAB-1k (written there when missing).
        fashion_source (str, optional): A folder with the Fashion-MNIST test
            files (default: ``data/fashion-mnist``, then Debian's
            ``/usr/share/datasets/fashion-mnist``).
        checkpoint (str): The pre-trained backbone (default: the shipped one).
        val (bool): Train on train800 and test on val200 (the lr-sweep
            protocol) instead of train800val200 -> test.
        force (bool): Rerun finished runs.
        cfg_options (dict, optional): Config overrides of every run, e.g.
            ``{'train_cfg.max_epochs': 1}``.

    Returns:
        OrderedDict: Per method the row of the table (:func:`summarize`):
        per task, group and ``'mean'`` ``(mean, std, n)`` of top-1 over
        seeds, ``trainable_backbone``, ``activation_mb``,
        ``tensor_peak_mb``, ``train_s``.
    """
    methods = list(methods or METHODS)
    tasks = list(tasks or MINI_VTAB_TASKS)
    seeds = list(seeds)
    unknown = [m for m in methods if m not in METHODS] + [t for t in tasks
                                                          if t not in MINI_VTAB_TASKS]
    if unknown:
        raise ValueError(f'run_demo: unknown method(s) or task(s) {unknown}; methods are '
                         f'{list(METHODS)}, tasks {list(MINI_VTAB_TASKS)}')
    sha = prepare(checkpoint, data_root, fashion_source)
    options = data_options(data_root)
    options.update(cfg_options or {})
    work_root = osp.abspath(work_dir) + ('_val' if val else '')
    plan = [(s, m, t) for s in seeds for m in methods for t in tasks]
    print(f'Demo: {len(plan)} runs ({len(methods)} methods x {len(tasks)} tasks x '
          f'{len(seeds)} seed(s)) from {checkpoint} (sha256 {sha[:12]}...), '
          f'{"train800 -> val200" if val else "train800val200 -> test"}; '
          f'logs in {work_root}', flush=True)
    start = time.time()
    records = []
    for i, (seed, method, task) in enumerate(plan, 1):
        record = run_one(method, task, seed, work_root, sha, options, val, force,
                         checkpoint=resolve_checkpoint(checkpoint))
        records.append(record)
        done = 'reused' if record.get('reused') else (
            f'train {record["train_s"]:.1f} s, test {record["test_s"]:.1f} s')
        print(f'[{i:2d}/{len(plan)}] seed {seed} {method:16s} {task:10s} top-1 '
              f'{record["top1"]:5.1f} %  ({done}; {time.time() - start:.0f} s elapsed)',
              flush=True)

    rows = summarize(records, tasks)
    protocol = 'val200 (trained on train800)' if val else 'test (trained on train800val200)'
    title = (f'Mini VTAB-1k top-1 (%) on {protocol}, ViT 6x96 pre-trained on Fashion-MNIST, '
             f'seeds {seeds}')
    table = to_markdown(rows, tasks)
    notes = ('Mean = mean of the group means; ± = std over seeds. Trainable parameters: '
             'backbone only (the head adds 97 x classes). Memory of one training step, '
             'batch 32, CPU fp32: bytes saved for backward (parameters excluded) and the '
             "step's tensor peak; train time per task, mean over runs.")
    write_markdown(osp.join(work_root, 'demo.md'), f'# {title}\n\n{table}\n{notes}\n')
    to_csv(osp.join(work_root, 'demo.csv'), rows, tasks)
    plot(osp.join(work_root, 'demo.png'), rows,
         f'Mini VTAB-1k: accuracy vs training memory (marker area ~ trainable '
         f'parameters)\n{protocol}, seeds {seeds}')
    print(f'\n{title}\n\n{table}\n{notes}\n')
    print(f'Wrote {work_root}/demo.md, demo.csv and demo.png in '
          f'{(time.time() - start) / 60:.1f} min', flush=True)
    return rows
