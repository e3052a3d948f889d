"""How the memory of a fine-tuning step scales with the backbone, estimated
without running it, and the estimator's validation against real CPU steps.

:func:`step_memory` builds :mod:`mmdtl.analysis.benchmark`'s classifier and
training step on *fake tensors* (PyTorch's FakeTensorMode: shapes, dtypes
and autograd as for real, no data, no memory, no math) and counts weights,
gradients, AdamW state, activations saved for backward and the step's peak
of live tensors (what ``torch.cuda.max_memory_allocated`` reports); with
``fake=False`` the same step runs on CPU and its peak is measured.
``tools/analysis/memory_scaling.py`` is the command line and documents the
figures; from Python::

    from mmdtl.analysis.memory_scaling import arch_recipe, step_memory
    row = step_memory(arch_recipe('vit-b'), 'dtl+', batch_size=32, img_size=224,
                      num_classes=100, fake=True)
    print(row['peak_gb'])

MB = 2**20 bytes, GB = 2**30 bytes.
"""
import contextlib
import csv
import statistics
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from mmdtl.analysis import benchmark as bench
from mmdtl.utils.report import markdown_table, new_figure, save_figure, write_csv, write_markdown

ARCHS = ['vit-s', 'vit-b', 'vit-l', 'vit-h', 'vit-eva-g', 'vit-dinov2-g',
         'swin-t', 'swin-s', 'swin-b', 'swin-l']
METHODS = ['full', 'lora', 'dtl', 'dtl+', 'dtl+ckpt', 'dtl_half', 'dtl+_half', 'dtl+ckpt_half',
           'dtl+ckpt+rp_half', 'dtl+ckpt+rp+rs_half', 'dtl+ckpt+rp+rs+sl_half']
VALIDATE_METHODS = METHODS
COLUMNS = ['arch', 'method', 'backbone_params', 'trainable', 'weights_mb', 'grads_mb',
           'optimizer_mb', 'activations_mb', 'peak_mb', 'peak_gb']
MEASURED_COLUMNS = ['measured_peak_mb', 'measured_vs_estimate']
GPU_SIZES_GB = (8, 16, 24, 80)
# (arch, method, goal, bound in GB): the goals, checked in the report.
GOALS = [('vit-b', 'dtl+', '<=', 1.0), ('vit-b', 'dtl+_half', '<=', 1.0),
         ('vit-b', 'dtl+ckpt+rp+rs+sl_half', '<=', 0.46),
         ('vit-dinov2-g', 'dtl+ckpt_half', '<=', 4.0),
         ('vit-dinov2-g', 'dtl+ckpt+rp_half', '<=', 4.0),
         ('vit-dinov2-g', 'dtl+ckpt+rp+rs_half', '<=', 3.6),
         ('vit-dinov2-g', 'dtl+ckpt+rp+rs+sl_half', '<=', 3.6),
         ('vit-dinov2-g', 'full', '>=', 30.0)]
MB = 2**20


def _print(line: str) -> None:
    print(line, flush=True)


def estimable_methods() -> list:
    """The methods whose step can be estimated: a warm cache and packed
    weights need real data and kernels, not fake tensors."""
    return [m for m in bench.ALL_METHODS if 'cache' not in m and 'packed' not in m]


def arch_recipe(arch: str, csn_start: Optional[int] = None,
                csn_taps_from: Optional[int] = None) -> tuple:
    """The benchmark's (backbone cfg, DTL recipe) of ``arch``, with the
    side network's ``M`` and first tap overridden if given.

    Args:
        arch (str): An ``--arch`` of :func:`mmdtl.analysis.benchmark.arch_names`.
        csn_start (int, optional): The side network's ``M`` (``csn.start``).
        csn_taps_from (int, optional): Tap only the blocks from this index on.
    """
    backbone, recipe = bench.arch_entry(arch)
    recipe = dict(recipe)
    if csn_start is not None:
        recipe['start'] = csn_start
    if csn_taps_from is not None:
        recipe['taps'] = [t for t in recipe['taps'] if t >= csn_taps_from]
    return backbone, recipe


def step_memory(arch, method: str, batch_size: int, img_size: int,
                num_classes: int, fake: bool, breakdown: bool = False) -> dict:
    """The memory budget of one training step.

    On fake tensors (estimated, nothing computed) or for real on CPU (the
    tensors' peak measured by the profiler, ``peak_mb``, and its
    allocator's, ``allocator_peak_mb``, see
    :func:`mmdtl.utils.memory.cpu_step_peaks`; activations not measured, to
    save time).

    Args:
        arch: An ``--arch`` name or a (backbone cfg, recipe) pair.
        method (str): A method of :func:`estimable_methods`.
        batch_size (int): Images per step.
        img_size (int): Image side in pixels.
        num_classes (int): Classes of the head.
        fake (bool): Estimate on fake tensors (else measure on CPU).
        breakdown (bool): The estimate's ``peak_breakdown`` lists what the
            step had allocated at its peak (see
            :class:`mmdtl.utils.memory.StorageMemoryTracker`).
    """
    from mmdtl.utils.memory import (
        StorageMemoryTracker,
        cpu_step_peaks,
        fake_tensors,
        saved_activation_bytes,
        tracked_step_peak_bytes,
        training_state,
        unique_storage_bytes,
    )

    with fake_tensors() if fake else contextlib.nullcontext():
        torch.manual_seed(0)
        model = bench.build_model(arch, method, num_classes, img_size, 'bfloat16').train()
        images = torch.randn(batch_size, 3, img_size, img_size)
        labels = torch.randint(0, num_classes, (batch_size,))
        loss_fn, train_step, optimizer = bench.make_train_step(
            model, images, labels, amp=True, foreach=True)
        row = dict(arch=arch if isinstance(arch, str) else None, method=method,
                   backbone_params=sum(p.numel() for p in model.backbone.parameters()),
                   trainable=sum(p.numel() for p in model.parameters() if p.requires_grad))
        row['activations_mb'] = saved_activation_bytes(model, loss_fn) / MB if fake else None
        train_step()  # gradients and optimizer state exist, as in every later step
        live = training_state(model, optimizer) + [images, labels]
        if fake:
            tracker = StorageMemoryTracker(describe_peak=breakdown)
            row['peak_mb'] = tracked_step_peak_bytes(train_step, live, tracker) / MB
            if breakdown:
                row['peak_breakdown'] = tracker.peak_breakdown
        else:
            peaks = cpu_step_peaks(train_step, live)
            row['peak_mb'] = peaks.tensors / MB
            row['allocator_peak_mb'] = peaks.allocator / MB
        row['weights_mb'] = unique_storage_bytes([*model.parameters(), *model.buffers()]) / MB
        row['grads_mb'] = unique_storage_bytes(
            p.grad for p in model.parameters() if p.grad is not None) / MB
        row['optimizer_mb'] = unique_storage_bytes(
            v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)) / MB
    row['peak_gb'] = row['peak_mb'] / 1024
    return row


def recipe_of(args, arch: str) -> tuple:
    """:func:`arch_recipe` of ``arch`` with ``args``'s side-network overrides."""
    return arch_recipe(arch, args.csn_start, args.csn_taps_from)


def validate(args, log: Callable[[str], None] = _print) -> list:
    """Estimate and measure every ``args.validate`` arch x
    ``args.validate_methods`` method at ``args.validate_batch_size``: one
    row each with the relative ``error`` and the CPU kernels' scratch."""
    rows = []
    for arch in args.validate:
        for method in args.validate_methods:
            sizes = (recipe_of(args, arch), method, args.validate_batch_size,
                     args.img_size, args.num_classes)
            tic = time.perf_counter()
            estimate = step_memory(*sizes, fake=True)
            measured = step_memory(*sizes, fake=False)
            allocator = measured['allocator_peak_mb']
            row = dict(arch=arch, method=method, batch=args.validate_batch_size,
                       estimated_mb=estimate['peak_mb'], measured_mb=measured['peak_mb'],
                       error=estimate['peak_mb'] / measured['peak_mb'] - 1,
                       allocator_peak_mb=allocator,
                       kernel_scratch_mb=allocator - measured['peak_mb'],
                       allocator_error=estimate['peak_mb'] / allocator - 1)
            rows.append(row)
            log(f'  validate {arch} {method} batch {args.validate_batch_size}: estimated '
                f'{row["estimated_mb"]:.2f} MB, measured {row["measured_mb"]:.2f} MB, '
                f'error {100 * row["error"]:+.2f} % (allocator peak {allocator:.2f} MB with '
                f'kernel scratch {row["kernel_scratch_mb"]:.2f} MB: '
                f'{100 * row["allocator_error"]:+.2f} %) '
                f'({time.perf_counter() - tic:.0f} s)')
    return rows


def estimate(args, log: Callable[[str], None] = _print) -> list:
    """The estimated row of every ``args.archs`` x ``args.methods`` at
    ``args.batch_size``; with ``args.breakdown`` N, the N largest kinds of
    tensor alive at each peak are logged."""
    rows = []
    for arch in args.archs:
        for method in args.methods:
            tic = time.perf_counter()
            row = step_memory(recipe_of(args, arch), method, args.batch_size,
                              args.img_size, args.num_classes, fake=True,
                              breakdown=args.breakdown > 0)
            row['arch'] = arch
            rows.append(row)
            log(f'  {arch} {method}: weights {row["weights_mb"]:.0f} MB, grads '
                f'{row["grads_mb"]:.0f} MB, optimizer {row["optimizer_mb"]:.0f} MB, '
                f'activations {row["activations_mb"]:.0f} MB, peak {row["peak_gb"]:.2f} GB '
                f'({time.perf_counter() - tic:.1f} s)')
            if args.breakdown:
                log(f'    at the peak, besides weights, gradients and optimizer state '
                    f'({row["weights_mb"] + row["grads_mb"] + row["optimizer_mb"]:.0f} MB):')
                for nbytes, count, op, dtype, shape in row.pop('peak_breakdown')[
                        :args.breakdown]:
                    log(f'    {nbytes / MB:9.1f} MB  {count:3d} x {dtype} {list(shape)} '
                        f'from {op}')
    return rows


def time_steps(args) -> dict:
    """Step times of ``args.time`` methods on real CPU tensors, interleaved:
    ``args.time_rounds`` rounds of one step of each method, in rotating
    order, after two warm-up steps each, so that a busy machine slows all
    methods alike. Returns ``methods``, {method: (fastest ms, median ms)},
    and ``machine``, a description of the CPU and its load."""
    recipe = recipe_of(args, args.time_arch)
    steps = {}
    for method in args.time:
        torch.manual_seed(0)
        model = bench.build_model(recipe, method, args.num_classes, args.img_size,
                                  'bfloat16').train()
        images = torch.randn(args.time_batch_size, 3, args.img_size, args.img_size)
        labels = torch.randint(0, args.num_classes, (args.time_batch_size,))
        steps[method] = bench.make_train_step(model, images, labels, amp=True)[1]
        for _ in range(2):
            steps[method]()
    times = {method: [] for method in steps}
    load = bench.OthersLoad()
    for round_ in range(args.time_rounds):
        order = list(steps)
        order = order[round_ % len(order):] + order[:round_ % len(order)]
        for method in order:
            tic = time.perf_counter()
            steps[method]()
            times[method].append(time.perf_counter() - tic)
    return dict(methods={m: (1000 * min(t), 1000 * statistics.median(t))
                         for m, t in times.items()},
                machine=(f'{bench.cpu_name()}, torch {torch.__version__}; other processes '
                         f'used {load.fraction()} of the CPU meanwhile'))


def timing_lines(args, timed: dict) -> list:
    """The markdown lines of :func:`time_steps`'s table."""
    methods = timed['methods']
    first = next(iter(methods))
    lines = [f'Step time on CPU: {args.time_arch}, batch {args.time_batch_size}, '
             f'{args.img_size} px, bf16 autocast, {args.time_rounds} interleaved rounds '
             f'({timed["machine"]}):', '']
    table = markdown_table(
        ['method', 'fastest ms', 'median ms', f'fastest vs {first}'],
        [[m, f'{best:.0f}', f'{median:.0f}', f'{best / methods[first][0]:.3f}']
         for m, (best, median) in methods.items()])
    return lines + table.splitlines() + ['']


def goal_lines(rows: list) -> list:
    """One line per goal of :data:`GOALS` whose arch and method were estimated."""
    found = {(r['arch'], r['method']): r['peak_gb'] for r in rows}
    lines = []
    for arch, method, relation, bound in GOALS:
        if (arch, method) not in found:
            continue
        value = found[(arch, method)]
        met = value <= bound if relation == '<=' else value >= bound
        lines.append(f'- {arch} {method}: {value:.3f} GB, goal {relation} {bound:g} GB: '
                     f'{"met" if met else "MISSED"}')
    return lines


def read_measured(specs: list) -> dict:
    """``ARCH=benchmark.csv`` pairs -> {(arch, method): measured peak MB};
    ``ValueError`` for a pair that is not one."""
    measured = {}
    for spec in specs:
        arch, sep, path = spec.partition('=')
        if not sep or not Path(path).is_file():
            raise ValueError(f'--measured {spec!r}: expected ARCH=PATH of a benchmark.csv')
        with open(path, newline='') as f:
            for row in csv.DictReader(f):
                measured[(arch, row['method'])] = float(row['peak_mb'])
    return measured


def add_measured(rows: list, measured: dict) -> None:
    """Add :data:`MEASURED_COLUMNS` to ``rows`` from :func:`read_measured`."""
    for row in rows:
        value = measured.get((row['arch'], row['method']))
        row['measured_peak_mb'] = value
        row['measured_vs_estimate'] = None if value is None else value / row['peak_mb'] - 1


def worst_error(checks: list) -> Optional[dict]:
    """The validation row with the largest relative error (None: none)."""
    return max(checks, key=lambda c: abs(c['error']), default=None)


def fmt(value) -> str:
    """A table cell: ``-`` for None, 2 decimals below 100, thousands separators."""
    if value is None:
        return '-'
    if isinstance(value, float):
        return f'{value:.2f}' if abs(value) < 100 else f'{value:.0f}'
    return f'{value:,}' if isinstance(value, int) else str(value)


def write_outputs(args, checks: list, rows: list, timed: Optional[dict] = None) -> dict:
    """``memory_scaling.md`` (validation, timing, table, goals), ``.csv``,
    ``.png`` and, with ``checks``, ``memory_scaling_validation.csv`` under
    ``args.work_dir``; returns their paths."""
    work_dir = Path(args.work_dir)
    title = (f'one AMP training step (bf16 autocast, AdamW), batch {args.batch_size}, '
             f'{args.img_size} px, estimated on fake tensors')
    overrides = [f'csn.start={args.csn_start}'] if args.csn_start is not None else []
    overrides += [f'taps from block {args.csn_taps_from}'] if args.csn_taps_from else []
    if overrides:
        title += f'; side network overridden: {", ".join(overrides)}'
    lines = [f'# Memory scaling: {title}', '']
    if checks:
        lines += [f'Estimator vs real CPU tensor peak (batch {args.validate_batch_size}; the '
                  f'allocator\'s peak adds the scratch that CPU kernels take and give back '
                  f'while they run, which the estimate leaves out):', '']
        lines += markdown_table(
            ['arch', 'method', 'estimated MB', 'measured MB', 'error', 'allocator peak MB',
             'kernel scratch MB', 'error vs allocator'],
            [[c['arch'], c['method'], f'{c["estimated_mb"]:.2f}', f'{c["measured_mb"]:.2f}',
              f'{100 * c["error"]:+.2f} %', f'{c["allocator_peak_mb"]:.2f}',
              f'{c["kernel_scratch_mb"]:.2f}', f'{100 * c["allocator_error"]:+.2f} %']
             for c in checks]).splitlines()
        lines.append('')
    if timed:
        lines += timing_lines(args, timed)
    columns = COLUMNS + (MEASURED_COLUMNS if args.measured else [])
    lines += markdown_table(columns, rows, fmt).splitlines()
    goals = goal_lines(rows)
    if goals:
        lines += ['', 'Goals:', *goals]
    paths = dict(md=work_dir / 'memory_scaling.md', csv=work_dir / 'memory_scaling.csv',
                 png=work_dir / 'memory_scaling.png')
    write_markdown(paths['md'], '\n'.join(lines) + '\n')
    if checks:
        paths['validation'] = work_dir / 'memory_scaling_validation.csv'
        write_csv(paths['validation'], list(checks[0]), checks)
    write_csv(paths['csv'], columns, rows)
    save_figure(plot(rows, title), paths['png'], dpi=120)
    return {k: str(v) for k, v in paths.items()}


def plot(rows: list, title: str):
    """Peak vs backbone parameters, one line per method, one panel per
    family, horizontal lines at :data:`GPU_SIZES_GB`; returns the figure."""
    families = [f for f in ('vit', 'swin') if any(r['arch'].startswith(f + '-') for r in rows)]
    families += [] if families else ['other']
    fig, axes = new_figure(1, len(families), figsize=(6.5 * len(families), 5), squeeze=False)
    # One colour per method in every panel (a panel may skip methods), 20 distinct.
    import matplotlib
    tab20 = matplotlib.colormaps['tab20']
    colours = {m: tab20((2 * i) % 20 + (2 * i) // 20)
               for i, m in enumerate(dict.fromkeys(r['method'] for r in rows))}
    for ax, family in zip(axes[0], families):
        mine = [r for r in rows if family == 'other' or r['arch'].startswith(family + '-')]
        for method in dict.fromkeys(r['method'] for r in mine):
            points = sorted((r['backbone_params'], r['peak_gb'], r['arch'])
                            for r in mine if r['method'] == method)
            style = '--' if method.endswith('_half') else '-'
            ax.plot([p[0] for p in points], [p[1] for p in points], style, marker='o',
                    color=colours[method], label=method)
        for size in GPU_SIZES_GB:
            ax.axhline(size, color='grey', linewidth=0.8, linestyle=':')
            ax.annotate(f'{size} GB', (0.01, size), xycoords=('axes fraction', 'data'),
                        fontsize=8, color='grey', va='bottom')
        archs = sorted({(r['backbone_params'], r['arch']) for r in mine})
        for params, arch in archs:
            ax.annotate(arch, (params, 0), xycoords=('data', 'axes fraction'), fontsize=7,
                        rotation=90, va='bottom', ha='right', color='grey')
        ax.set_xscale('log')
        ax.set_yscale('log')
        ax.set_xlabel('backbone parameters (log)')
        ax.set_ylabel('peak memory of a training step (GB, log)')
        ax.set_title(family.upper() if family != 'other' else 'backbones')
        ax.grid(alpha=.3, which='both')
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc='center right', fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    return fig
