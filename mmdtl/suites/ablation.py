"""Ablations of the side network around a base config: ``M``, rank, DWConv
kernel and tap sets, one axis at a time, and their accuracy-memory trade-off.

``tools/run_suite.py ablation-*`` trains every setting on every task of its
suite (``--seeds``) and writes the table and the Pareto plot with
:func:`ablation_table` and :func:`plot_pareto`. A setting is the base
config's ``model.backbone.csn`` with one field changed, so every other part of
the recipe (lr, schedule, data) stays the base config's.
"""
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from mmdtl.utils.report import new_figure, save_figure
from mmdtl.utils.stats import mean as _mean
from mmdtl.utils.stats import sample_std as _std


@dataclass(frozen=True)
class AblationSetting:
    """One point of an ablation: the base side network with some fields changed.

    Args:
        name (str): Row label and run folder, e.g. ``'M=2'``, ``'rank=8'``.
        axis (str): What changes: ``'base'``, ``'M'``, ``'rank'``,
            ``'kernel'`` or ``'taps'``.
        csn (dict): The ``model.backbone.csn`` fields that differ from the
            base config's.
    """
    name: str
    axis: str
    csn: dict = field(default_factory=dict)

    def cfg_options(self) -> List[str]:
        """The setting as ``--cfg-options`` strings of the tools."""
        options = []
        for key, value in self.csn.items():
            text = ('[' + ','.join(str(v) for v in value) + ']'
                    if isinstance(value, (list, tuple)) else str(value))
            options.append(f'model.backbone.csn.{key}={text}')
        return options


def _taps_text(taps: Sequence[int]) -> str:
    return ','.join(str(t) for t in taps)


def ablation_settings(depth: int, start: int, rank: int, kernel: Optional[int],
                      ranks: Sequence[int] = (1, 2, 4, 8),
                      kernels: Sequence[int] = (0, 1, 3, 5)) -> List[AblationSetting]:
    """The settings around a base side network of a ``depth``-block trunk
    whose every block is tapped (the released ViT recipe).

    - ``M`` (``csn.start``): every ``depth // 6``-th block from the first
      (1..5 for 6 blocks, 2..10 for 12), the taps unchanged;
    - ``rank``: ``ranks``; ``kernel``: ``kernels`` (0 is DTL, no DWConv; 1
      a per-channel scale);
    - taps: every 2nd and every 3rd block (from block 0), and every block from
      ``M // 2`` and from ``M`` (the frozen blocks before them feed nothing).

    The base itself is the first setting.

    Args:
        depth (int): Number of blocks of the trunk.
        start (int): The base ``M``.
        rank (int): The base rank.
        kernel (int | None): The base DWConv kernel (0: DTL); None where
            every task has its own (every kernel of ``kernels`` is tried).
        ranks (Sequence[int]): Ranks to try.
        kernels (Sequence[int]): Kernels to try.
    """
    if not 0 < start < depth:
        raise ValueError(f'the base csn.start (M) must be in [1, {depth - 1}], got {start}')
    settings = [AblationSetting('base', 'base')]
    step = max(1, depth // 6)
    settings += [AblationSetting(f'M={m}', 'M', dict(start=m))
                 for m in range(step, depth, step) if m != start]
    settings += [AblationSetting(f'rank={r}', 'rank', dict(rank=r)) for r in ranks if r != rank]
    settings += [AblationSetting(f'kernel={k}', 'kernel', dict(dwconv_kernel=k))
                 for k in kernels if k != kernel]
    tap_sets = OrderedDict()
    for every in (2, 3):
        tap_sets[f'taps every {every}'] = list(range(0, depth, every))
    for first in sorted({start // 2, start}):
        if first > 0:
            tap_sets[f'taps from {first}'] = list(range(first, depth))
    for name, taps in tap_sets.items():
        if taps and taps[0] <= start:  # a tap must feed the first add-back
            settings.append(AblationSetting(name, 'taps', dict(taps=taps)))
    return settings


def setting_description(setting: AblationSetting, base_csn: dict) -> str:
    """``'M=3, rank 2, k=3, taps 0-5'``: the side network a setting trains."""
    csn = dict(base_csn, **setting.csn)
    taps = list(csn.get('taps') or [])
    if taps and taps == list(range(taps[0], taps[-1] + 1)):
        taps_text = f'{taps[0]}-{taps[-1]}'
    else:
        taps_text = _taps_text(taps)
    kernel = csn.get('dwconv_kernel', 0)
    kernel_text = ('no DWConv' if not kernel else
                   f'k {kernel}' if isinstance(kernel, str) else f'k={kernel}')
    return f'M={csn.get("start")}, rank {csn.get("rank")}, {kernel_text}, taps {taps_text}'


def pareto_front(points: Dict[str, Tuple[float, float]]) -> List[str]:
    """The names of the points no other point beats on both axes: lower
    memory (first value) and higher accuracy (second), ordered by memory.

    A point is dominated when another has memory <= and accuracy >= with one
    of the two strictly better.
    """
    front = []
    for name, (memory, accuracy) in points.items():
        dominated = any(
            m <= memory and a >= accuracy and (m < memory or a > accuracy)
            for other, (m, a) in points.items() if other != name)
        if not dominated:
            front.append(name)
    return sorted(front, key=lambda n: (points[n][0], -points[n][1]))


def ablation_table(results: Dict[str, Dict[str, Dict[int, float]]], tasks: Sequence[str],
                   groups: Optional[Dict[str, Sequence[str]]] = None
                   ) -> 'OrderedDict[str, dict]':
    """Accuracy per setting: ``{setting: {task: {seed: top1}}}`` -> one row
    per setting with ``(mean, std, n)`` over seeds per task, per group
    (``groups``, keyed by the capitalised group name) and for ``Mean``.

    A group mean and ``Mean`` are computed per seed (``Mean`` is the mean of
    the group means when ``groups`` is given, as the VTAB-1k tables; else of
    the tasks), then averaged over the seeds that have every task they need;
    None when no seed has.
    """
    def over_seeds(per_task, seeds, members, of_seed):
        values = [of_seed(seed) for seed in seeds
                  if all(seed in (per_task.get(t) or {}) for t in members)]
        return (_mean(values), _std(values), len(values)) if values else None

    rows = OrderedDict()
    for name, per_task in results.items():
        row = OrderedDict()
        for task in tasks:
            values = list((per_task.get(task) or {}).values())
            row[task] = (_mean(values), _std(values), len(values)) if values else None
        seeds = sorted({s for by_seed in per_task.values() for s in by_seed})
        group_mean = {g: (lambda seed, m=members: _mean([per_task[t][seed] for t in m]))
                      for g, members in (groups or {}).items()}
        for group, members in (groups or {}).items():
            row[group.capitalize()] = over_seeds(per_task, seeds, members, group_mean[group])
        if groups:
            row['Mean'] = over_seeds(per_task, seeds, tasks, lambda seed: _mean(
                [of_seed(seed) for of_seed in group_mean.values()]))
        else:
            row['Mean'] = over_seeds(per_task, seeds, tasks, lambda seed: _mean(
                [per_task[t][seed] for t in tasks]))
        rows[name] = row
    return rows


def plot_pareto(path: str, points: Dict[str, Tuple[float, float]], axes: Dict[str, str],
                xlabel: str, title: str) -> None:
    """Accuracy vs memory, one labelled point per setting coloured by its
    axis, the Pareto front (:func:`pareto_front`) drawn as a step line."""
    colours = dict(base='black', M='tab:blue', rank='tab:orange', kernel='tab:green',
                   taps='tab:purple')
    fig, ax = new_figure(figsize=(7.5, 5))
    for axis, colour in colours.items():
        names = [n for n in points if axes.get(n) == axis]
        if names:
            ax.scatter([points[n][0] for n in names], [points[n][1] for n in names],
                       color=colour, label=axis, zorder=3, s=40 if axis == 'base' else 25)
    for name, (x, y) in points.items():
        ax.annotate(name, (x, y), textcoords='offset points', xytext=(4, 3), fontsize=7)
    front = pareto_front(points)
    if front:
        ax.step([points[n][0] for n in front], [points[n][1] for n in front], where='post',
                color='grey', linestyle='--', linewidth=1, label='Pareto front', zorder=2)
    ax.set_xlabel(xlabel)
    ax.set_ylabel('Mean top-1 (%)')
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
