"""The suites' tables in the paper's layouts: pure functions of the metrics.

A cell is a number, None (missing) or, where seeds are averaged,
``(mean, std, number of seeds)``. :func:`to_markdown` and :func:`to_csv`
write any of them through :mod:`mmdtl.utils.report`.
"""
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

from mmdtl.datasets.domain_generalization import DG_SUBSET_TARGETS, DG_TARGETS
from mmdtl.datasets.few_shot import FEW_SHOT_DATASETS
from mmdtl.datasets.vtab import VTAB1K_GROUPS, VTAB1K_TASKS
from mmdtl.utils.report import markdown_table, write_csv
from mmdtl.utils.stats import mean as _mean
from mmdtl.utils.stats import sample_std as _std


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


def cell_text(cell, expected_n: Optional[int] = None) -> str:
    """A cell as the tables show it: ``'-'``, ``'81.0'``, ``'81.0 ±1.4'``,
    with ``*`` when it has fewer than ``expected_n`` seeds."""
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
    """A table of :func:`vtab_table` & co. as markdown (see :func:`cell_text`)."""
    return markdown_table(header, rows, fmt=lambda cell: cell_text(cell, expected_n))


def to_csv(path: str, header: List[str], rows: List[list]) -> None:
    """Means (and std / number of seeds for seed-averaged cells) as plain numbers."""
    seeded = any(isinstance(c, tuple) for row in rows for c in row)
    if not seeded:
        write_csv(path, header, [
            ['' if c is None else (c if isinstance(c, str) else f'{c:.2f}') for c in row]
            for row in rows])
        return
    labels = [h for h, c in zip(header, rows[0]) if isinstance(c, str)] if rows else []
    values = header[len(labels):]
    out_rows = []
    for row in rows:
        out = list(row[:len(labels)])
        for cell in row[len(labels):]:
            mean, std, n = cell if cell is not None else (None, None, None)
            out += ['' if mean is None else f'{mean:.2f}',
                    '' if std is None else f'{std:.2f}', '' if n is None else n]
        out_rows.append(out)
    write_csv(path, labels + [f'{h}{s}' for h in values for s in ('', ' std', ' n')], out_rows)
