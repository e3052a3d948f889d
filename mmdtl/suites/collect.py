"""Read a suite's finished runs (their ``results.json``) into its table.

:func:`collect` makes the VTAB-1k, mini VTAB-1k, few-shot and DG tables,
:func:`collect_ablation` the ablation's (with the memory of every setting and
the Pareto plot); :func:`write_suite_report` writes ``results.md`` and
``results.csv``.
"""
import json
import os.path as osp
from collections import OrderedDict
from typing import List, Optional, Sequence, Tuple

from mmdtl.utils.cfg_options import parse_cfg_options
from mmdtl.utils.report import markdown_table, write_csv, write_json, write_markdown

from .ablation import ablation_table, pareto_front, plot_pareto, setting_description
from .definitions import (
    ABLATION_MEMORY,
    REPO,
    RESULTS,
    SUITES,
    TOP1,
    Run,
    ablation_benchmark,
    setting_folder,
    suite_settings,
)
from .tables import (
    cell_text,
    dg_table,
    few_shot_table,
    mini_vtab_table,
    to_csv,
    to_markdown,
    vtab_table,
)


def read_results(runs: Sequence[Run]) -> List[Tuple[Run, dict]]:
    """``(run, metrics)`` of every run that has its ``results.json``."""
    records = []
    for run in runs:
        path = osp.join(run.run_dir, RESULTS)
        if osp.isfile(path):
            with open(path) as f:
                records.append((run, json.load(f)['metrics']))
    return records


def collect(suite: str, runs: List[Run], seeds: Sequence[int], shots) -> Tuple[str, List, List]:
    """Read the runs' results.json into the suite's table.

    Args:
        suite (str): A name of :data:`~mmdtl.suites.definitions.SUITES`
            (not an ablation: see :func:`collect_ablation`).
        runs (list[Run]): Its runs (:func:`~mmdtl.suites.definitions.plan_runs`).
        seeds (Sequence[int]): The planned seeds (a cell with fewer is
            marked ``*``).
        shots (Sequence[int] | None): The few-shot columns (None: those of
            the runs).

    Returns:
        tuple: The markdown (a title line and the table), the header and the
        rows (see :mod:`mmdtl.suites.tables`).
    """
    kind = SUITES[suite][0]
    records = read_results(runs)
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
        write_json(path, record)
    return record


def collect_ablation(suite: str, runs: List[Run], suite_dir: str, write: bool) -> str:
    """The ablation's table (markdown, returned; with ``write`` also
    ``results.csv`` and the Pareto plot ``pareto.png``): accuracy over seeds
    per task, group and ``Mean``, and per setting the backbone's trainable
    parameters and the memory of one training step.

    Args:
        suite (str): An ablation suite (``'ablation-mini-vtab'``, ...).
        runs (list[Run]): Its runs.
        suite_dir (str): Its folder (``memory.json`` per setting, the CSV
            and the plot go there).
        write (bool): Write the CSV, the plot and the measured memory (a
            dry run shows only what costs no data).
    """
    from mmengine.config import Config

    tasks, groups = ablation_benchmark(suite)
    results = OrderedDict()
    first = OrderedDict()  # setting -> its first run (the memory is counted on its config)
    for run in runs:
        first.setdefault(run.setting, run)
        results.setdefault(run.setting, {})
    for run, metrics in read_results(runs):
        top1 = metrics.get(TOP1)
        if top1 is not None:
            results[run.setting].setdefault(run.dataset, {})[run.seed] = top1
    rows = ablation_table(results, tasks, groups)
    # an estimate on fake tensors costs no data and seconds: a dry run shows it too
    memory = {name: setting_memory(suite, run, suite_dir,
                                   compute=write or ABLATION_MEMORY[suite] == 'fake',
                                   store=write)
              for name, run in first.items()}
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
    group_cols = [g.capitalize() for g in groups]
    header = (['setting', 'side network'] + shown_cells + group_cols +
              ['Mean', 'trainable (backbone)', 'activations saved', 'step peak', 'front'])
    table_rows = []
    for name, row in rows.items():
        mem = memory[name]
        cells = [name, setting_description(settings[name], base_csn)]
        cells += [cell_text(row[c]) for c in shown_cells + group_cols + ['Mean']]
        cells += ([f'{mem["trainable"]:,}', f'{mem["activations_mb"]:.2f} MB',
                   f'{mem["step_peak_mb"]:.2f} MB'] if mem else ['-', '-', '-'])
        cells.append('yes' if name in front else '')
        table_rows.append(cells)
    seeds = sorted({run.seed for run in runs})
    some = next((m for m in memory.values() if m), None)
    how = ('' if some is None else
           f' Memory: one fp32 training step at batch {some["batch_size"]} of '
           f'{some["config"]}, {"run on CPU (profiler)" if some["mode"] == "real" else "counted on fake tensors (estimate)"}; '  # noqa: E501
           'activations = bytes saved for backward, step peak = live tensors at the peak.')
    text = (f'Ablation around {next(iter(first.values())).method}: top-1 (%) '
            f'mean ± std over seeds {seeds}; Mean = mean of the group means. front = on the '
            f'Pareto front of Mean vs activations saved.{how}\n\n' +
            markdown_table(header, table_rows))
    if write:
        cols = tasks + group_cols + ['Mean']
        csv_rows = []
        for name, row in rows.items():
            out = [name, settings[name].axis, setting_description(settings[name], base_csn)]
            for c in cols:
                cell = row.get(c)
                out += (['', '', ''] if cell is None else
                        [f'{cell[0]:.2f}', f'{cell[1]:.2f}', cell[2]])
            mem = memory[name]
            out += ([mem['trainable'], f'{mem["activations_mb"]:.3f}',
                     f'{mem["step_peak_mb"]:.3f}'] if mem else ['', '', ''])
            csv_rows.append(out + [int(name in front)])
        write_csv(osp.join(suite_dir, 'results.csv'),
                  ['setting', 'axis', 'side network'] +
                  [f'{c}{s}' for c in cols for s in ('', ' std', ' n')] +
                  ['trainable', 'activations_mb', 'step_peak_mb', 'pareto_front'], csv_rows)
        if points:
            plot_pareto(osp.join(suite_dir, 'pareto.png'), points,
                        {n: settings[n].axis for n in points},
                        'activations saved for backward, one step (MB)',
                        f'{suite}: Mean top-1 vs memory, seeds {seeds}')
    return text


def suite_table(suite: str, runs: List[Run], suite_dir: str, seeds: Sequence[int],
                shots=None, write: bool = True) -> str:
    """The suite's table from its finished runs (markdown, returned); with
    ``write`` also ``<suite_dir>/results.md`` and ``results.csv`` (ablations:
    and ``pareto.png``).

    Args:
        suite (str): A name of :data:`~mmdtl.suites.definitions.SUITES`.
        runs (list[Run]): Its runs.
        suite_dir (str): Its folder.
        seeds (Sequence[int]): The planned seeds.
        shots (Sequence[int], optional): The few-shot columns.
        write (bool): Write the files (False: a dry run).
    """
    if SUITES[suite][0] == 'ablation':
        table = collect_ablation(suite, runs, suite_dir, write=write)
    else:
        table, header, rows = collect(suite, runs, seeds, shots)
        if write:
            to_csv(osp.join(suite_dir, 'results.csv'), header, rows)
    if write:
        write_markdown(osp.join(suite_dir, 'results.md'), f'# {suite}\n\n{table}')
    return table
