"""How the memory of a fine-tuning step scales with the backbone, estimated
without running it.

For every backbone (``--archs``, any ``--arch`` of ``benchmark.py``: ViT-S to
DINOv2-g, Swin-T to Swin-L) and method (``--methods``, those of
``benchmark.py``: full, LoRA, DTL, DTL+, DTL+ with the suffix checkpointed,
and the DTL variants with frozen weights stored in half precision,
``*_half``; ``dtl+ckpt+rp_half`` also recomputes the frozen prefix's CSN tap
inputs in backward, ``dtl+ckpt+rp+rs_half`` also the running sums that the
checkpointed suffix would keep), it builds ``benchmark.py``'s classifier and training step on
*fake tensors* (PyTorch's FakeTensorMode: shapes, dtypes and autograd as for
real, no data, no memory, no math) and counts, for one AMP step at
``--batch-size``:

- ``weights_mb``: parameters and buffers as stored;
- ``grads_mb``: gradients of the trainable parameters;
- ``optimizer_mb``: AdamW state;
- ``activations_mb``: tensors saved for backward (storage-deduplicated,
  parameters excluded);
- ``peak_mb``: the step's peak of live tensors, the quantity
  ``torch.cuda.max_memory_allocated`` reports: what lives across steps plus
  the peak of what the step allocates and frees, traced op by op.

The step is ``benchmark.py``'s: bf16 autocast (as many bytes per element as
the GPU recipe's fp16 AMP; half-stored weights in bf16), cross-entropy,
backward, AdamW with multi-tensor updates (a GPU's default). Not counted:
the caching allocator's rounding of every block to 512 bytes (which
``max_memory_allocated`` counts; negligible next to activations) and its
fragmentation (which it does not count), and the workspaces of CUDA
libraries (cuBLAS, cuDNN), which ``max_memory_allocated`` does count: their
size depends on the library and the GPU (``--measured`` shows the sum of
what differs).

**Validation.** Before the estimates, the same step runs for real on CPU for
``--validate`` archs (ViT-S and ViT-B) and methods (all of them) at
``--validate-batch-size``, and its tensor peak is measured from the CPU
profiler's allocation records (:func:`mmdtl.utils.memory.cpu_step_peaks`, an
independent count: the allocator's trace, read between ops). The relative
error of every estimate is printed; above ``--tolerance`` (1 %) the tool
fails. Printed beside it: the allocator's own peak, which adds the scratch
memory that CPU kernels take and give back inside an op (an fp32 + bf16 add
copies its bf16 operand to fp32 first; oneDNN convolutions and GEMMs reorder
operands). That scratch is no tensor of the step, depends on the CPU and has
no counterpart on a GPU, so the estimate leaves it out; the allocator's peak
exceeds the estimate by it (``kernel_scratch_mb``, up to ~1 % at ViT-S/B
sizes, more on tiny models). Checkpoints that recompute nothing random keep
no RNG state (a 5 KB host tensor each, which the estimate does not see).

**What memory costs in time.** ``--time METHOD ...`` runs real CPU steps
(bf16 autocast, as estimated) of those methods on ``--time-arch`` at
``--time-batch-size``, interleaved: ``--time-rounds`` rounds of one step of
each method, in rotating order, after two warm-up steps each, so that a
busy machine slows all methods alike. It prints the fastest and the median
step of each (the fastest is the least disturbed by other processes), the
CPU, PyTorch's version and the share of the CPU that other processes used
meanwhile.

``--measured ARCH=CSV`` adds the peaks that ``benchmark.py`` measured (its
``benchmark.csv``; on a GPU ``max_memory_allocated``) next to the estimates:
``tools/analysis/gpu_check.sh`` uses it.

Writes ``memory_scaling.md`` (validation, table, goals), ``memory_scaling.csv``
and ``memory_scaling.png`` (peak vs backbone parameters, one line per method,
horizontal lines at 8, 16, 24 and 80 GB) under ``--work-dir``.
MB = 2**20 bytes, GB = 2**30 bytes.

Example::

    python tools/analysis/memory_scaling.py
    python tools/analysis/memory_scaling.py --archs vit-b vit-dinov2-g --methods full dtl+
"""
import argparse
import contextlib
import csv
import importlib.util
import io
import sys
import time
from pathlib import Path
from typing import Optional

import torch

HERE = Path(__file__).resolve().parent
ARCHS = ['vit-s', 'vit-b', 'vit-l', 'vit-h', 'vit-eva-g', 'vit-dinov2-g',
         'swin-t', 'swin-s', 'swin-b', 'swin-l']
METHODS = ['full', 'lora', 'dtl', 'dtl+', 'dtl+ckpt', 'dtl_half', 'dtl+_half', 'dtl+ckpt_half',
           'dtl+ckpt+rp_half', 'dtl+ckpt+rp+rs_half']
VALIDATE_METHODS = METHODS
COLUMNS = ['arch', 'method', 'backbone_params', 'trainable', 'weights_mb', 'grads_mb',
           'optimizer_mb', 'activations_mb', 'peak_mb', 'peak_gb']
MEASURED_COLUMNS = ['measured_peak_mb', 'measured_vs_estimate']
GPU_SIZES_GB = (8, 16, 24, 80)
# (arch, method, goal, bound in GB): the goals, checked in the report.
GOALS = [('vit-b', 'dtl+', '<=', 1.0), ('vit-b', 'dtl+_half', '<=', 1.0),
         ('vit-b', 'dtl+ckpt+rp+rs_half', '<=', 0.46),
         ('vit-dinov2-g', 'dtl+ckpt_half', '<=', 4.0),
         ('vit-dinov2-g', 'dtl+ckpt+rp_half', '<=', 4.0),
         ('vit-dinov2-g', 'dtl+ckpt+rp+rs_half', '<=', 3.6),
         ('vit-dinov2-g', 'full', '>=', 30.0)]
MB = 2**20


def load_benchmark():
    """``tools/analysis/benchmark.py``, whose models and step are measured."""
    spec = importlib.util.spec_from_file_location('mmdtl_benchmark', HERE / 'benchmark.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def arch_recipe(bench, arch: str, csn_start=None, csn_taps_from=None) -> tuple:
    """``benchmark.py``'s (backbone cfg, DTL recipe) of ``arch``, with the
    side network's ``M`` and first tap overridden if given."""
    backbone, recipe = bench.arch_entry(arch)
    recipe = dict(recipe)
    if csn_start is not None:
        recipe['start'] = csn_start
    if csn_taps_from is not None:
        recipe['taps'] = [t for t in recipe['taps'] if t >= csn_taps_from]
    return backbone, recipe


def step_memory(bench, arch, method: str, batch_size: int, img_size: int,
                num_classes: int, fake: bool, breakdown: bool = False) -> dict:
    """The memory budget of one training step of ``arch`` (a name or a
    (backbone cfg, recipe) pair) and ``method``: on fake tensors (estimated,
    nothing computed) or for real on CPU (the tensors' peak measured by the
    profiler, ``peak_mb``, and its allocator's, ``allocator_peak_mb``, see
    :func:`cpu_step_peaks`; activations not measured, to save time). With
    ``breakdown``, the
    estimate's ``peak_breakdown`` lists what the step had allocated at its
    peak (see :class:`StorageMemoryTracker`)."""
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


def validate(bench, args) -> list:
    rows = []
    for arch in args.validate:
        for method in args.validate_methods:
            sizes = (recipe_of(bench, args, arch), method, args.validate_batch_size,
                     args.img_size, args.num_classes)
            tic = time.perf_counter()
            estimate = step_memory(bench, *sizes, fake=True)
            measured = step_memory(bench, *sizes, fake=False)
            allocator = measured['allocator_peak_mb']
            row = dict(arch=arch, method=method, batch=args.validate_batch_size,
                       estimated_mb=estimate['peak_mb'], measured_mb=measured['peak_mb'],
                       error=estimate['peak_mb'] / measured['peak_mb'] - 1,
                       allocator_peak_mb=allocator,
                       kernel_scratch_mb=allocator - measured['peak_mb'],
                       allocator_error=estimate['peak_mb'] / allocator - 1)
            rows.append(row)
            print(f'  validate {arch} {method} batch {args.validate_batch_size}: estimated '
                  f'{row["estimated_mb"]:.2f} MB, measured {row["measured_mb"]:.2f} MB, '
                  f'error {100 * row["error"]:+.2f} % (allocator peak {allocator:.2f} MB with '
                  f'kernel scratch {row["kernel_scratch_mb"]:.2f} MB: '
                  f'{100 * row["allocator_error"]:+.2f} %) '
                  f'({time.perf_counter() - tic:.0f} s)', flush=True)
    return rows


def time_steps(bench, args) -> dict:
    """Step times of ``args.time`` methods on real CPU tensors, interleaved
    (see the module docstring): ``methods``, {method: (fastest ms, median
    ms)}, and ``machine``, a description of the CPU and its load."""
    import statistics

    recipe = recipe_of(bench, args, args.time_arch)
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
    methods = timed['methods']
    first = next(iter(methods))
    lines = [f'Step time on CPU: {args.time_arch}, batch {args.time_batch_size}, '
             f'{args.img_size} px, bf16 autocast, {args.time_rounds} interleaved rounds '
             f'({timed["machine"]}):', '',
             f'| method | fastest ms | median ms | fastest vs {first} |', '|---|---|---|---|']
    lines += [f'| {m} | {best:.0f} | {median:.0f} | {best / methods[first][0]:.3f} |'
              for m, (best, median) in methods.items()]
    return lines + ['']


def recipe_of(bench, args, arch: str) -> tuple:
    return arch_recipe(bench, arch, args.csn_start, args.csn_taps_from)


def goal_lines(rows: list) -> list:
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
    """``ARCH=benchmark.csv`` pairs -> {(arch, method): measured peak MB}."""
    measured = {}
    for spec in specs:
        arch, sep, path = spec.partition('=')
        if not sep or not Path(path).is_file():
            raise SystemExit(f'--measured {spec!r}: expected ARCH=PATH of a benchmark.csv')
        with open(path, newline='') as f:
            for row in csv.DictReader(f):
                measured[(arch, row['method'])] = float(row['peak_mb'])
    return measured


def add_measured(rows: list, measured: dict) -> None:
    for row in rows:
        value = measured.get((row['arch'], row['method']))
        row['measured_peak_mb'] = value
        row['measured_vs_estimate'] = None if value is None else value / row['peak_mb'] - 1


def fmt(value) -> str:
    if value is None:
        return '-'
    if isinstance(value, float):
        return f'{value:.2f}' if abs(value) < 100 else f'{value:.0f}'
    return f'{value:,}' if isinstance(value, int) else str(value)


def write_outputs(args, checks: list, rows: list, timed: Optional[dict] = None) -> dict:
    from mmdtl.utils.checkpoint import _write_text_atomic

    work_dir = Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
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
                  f'while they run, which the estimate leaves out):', '',
                  '| arch | method | estimated MB | measured MB | error | allocator peak MB '
                  '| kernel scratch MB | error vs allocator |', '|---|---|---|---|---|---|---|---|']
        lines += [f'| {c["arch"]} | {c["method"]} | {c["estimated_mb"]:.2f} | '
                  f'{c["measured_mb"]:.2f} | {100 * c["error"]:+.2f} % | '
                  f'{c["allocator_peak_mb"]:.2f} | {c["kernel_scratch_mb"]:.2f} | '
                  f'{100 * c["allocator_error"]:+.2f} % |' for c in checks]
        lines.append('')
    if timed:
        lines += timing_lines(args, timed)
    columns = COLUMNS + (MEASURED_COLUMNS if args.measured else [])
    lines += ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
    lines += ['| ' + ' | '.join(fmt(r[c]) for c in columns) + ' |' for r in rows]
    goals = goal_lines(rows)
    if goals:
        lines += ['', 'Goals:', *goals]
    paths = dict(md=work_dir / 'memory_scaling.md', csv=work_dir / 'memory_scaling.csv',
                 png=work_dir / 'memory_scaling.png')
    _write_text_atomic(str(paths['md']), '\n'.join(lines) + '\n')
    if checks:
        paths['validation'] = work_dir / 'memory_scaling_validation.csv'
        table = io.StringIO()
        writer = csv.DictWriter(table, fieldnames=list(checks[0]))
        writer.writeheader()
        writer.writerows(checks)
        _write_text_atomic(str(paths['validation']), table.getvalue())
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    _write_text_atomic(str(paths['csv']), table.getvalue())
    plot(rows, title, paths['png'])
    return {k: str(v) for k, v in paths.items()}


def plot(rows: list, title: str, path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    families = [f for f in ('vit', 'swin') if any(r['arch'].startswith(f + '-') for r in rows)]
    families += [] if families else ['other']
    fig, axes = plt.subplots(1, len(families), figsize=(6.5 * len(families), 5), squeeze=False)
    for ax, family in zip(axes[0], families):
        mine = [r for r in rows if family == 'other' or r['arch'].startswith(family + '-')]
        for method in dict.fromkeys(r['method'] for r in mine):
            points = sorted((r['backbone_params'], r['peak_gb'], r['arch'])
                            for r in mine if r['method'] == method)
            style = '--' if method.endswith('_half') else '-'
            ax.plot([p[0] for p in points], [p[1] for p in points], style, marker='o',
                    label=method)
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
    fig.savefig(path.with_suffix('.tmp.png'), dpi=120)
    plt.close(fig)
    path.with_suffix('.tmp.png').replace(path)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--archs', nargs='+', default=ARCHS,
                        help='any --arch of benchmark.py (vit-<arch>, swin-<arch>)')
    parser.add_argument('--methods', nargs='+', default=METHODS)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--num-classes', type=int, default=100)
    parser.add_argument('--validate', nargs='*', default=['vit-s', 'vit-b'],
                        help='archs whose estimate is checked against a real CPU step '
                             '(none: skip)')
    parser.add_argument('--validate-methods', nargs='+', default=VALIDATE_METHODS)
    parser.add_argument('--validate-batch-size', type=int, default=4)
    parser.add_argument('--tolerance', type=float, default=0.01,
                        help='largest relative error of the validation against the '
                             'tensor peak (default 1 %%)')
    parser.add_argument('--csn-start', type=int,
                        help='override the side network\'s M (csn.start) of every arch')
    parser.add_argument('--csn-taps-from', type=int,
                        help='tap only the blocks from this index on (every arch)')
    parser.add_argument('--breakdown', type=int, default=0, metavar='N',
                        help='print the N largest kinds of tensor alive at each peak')
    parser.add_argument('--measured', nargs='*', default=[], metavar='ARCH=CSV',
                        help="benchmark.py's benchmark.csv of an arch, to compare its "
                             "measured peaks with the estimates")
    parser.add_argument('--time', nargs='+', metavar='METHOD',
                        help='also time real CPU steps of these methods (bf16 autocast, '
                             'interleaved rounds): what their memory costs in time')
    parser.add_argument('--time-arch', default='vit-b', help='the arch of --time')
    parser.add_argument('--time-batch-size', type=int, default=4)
    parser.add_argument('--time-rounds', type=int, default=10)
    parser.add_argument('--work-dir', default='work_dirs/memory_scaling')
    args = parser.parse_args(argv)
    bench = load_benchmark()
    known = bench.arch_names()
    for arch in args.archs + args.validate + ([args.time_arch] if args.time else []):
        if arch not in known:
            parser.error(f'unknown arch {arch!r}; choose from {known}')
    # A warm cache and packed weights need real data and kernels, not fake tensors.
    allowed = [m for m in bench.ALL_METHODS if 'cache' not in m and 'packed' not in m]
    validated = args.validate_methods if args.validate else []
    for method in args.methods + validated + (args.time or []):
        if method not in allowed:
            parser.error(f'method {method!r} cannot be estimated; choose from {allowed}')
    if min(args.batch_size, args.validate_batch_size, args.time_batch_size,
           args.time_rounds) < 1:
        parser.error('--batch-size, --validate-batch-size, --time-batch-size and '
                     '--time-rounds must be >= 1')
    return args, bench


def main(argv=None):
    args, bench = parse_args(argv)
    checks = []
    if args.validate:
        print(f'Validating the estimator against real CPU steps '
              f'(batch {args.validate_batch_size}):', flush=True)
        checks = validate(bench, args)
    rows = []
    for arch in args.archs:
        for method in args.methods:
            recipe = recipe_of(bench, args, arch)
            tic = time.perf_counter()
            row = step_memory(bench, recipe, method, args.batch_size,
                              args.img_size, args.num_classes, fake=True,
                              breakdown=args.breakdown > 0)
            row['arch'] = arch
            rows.append(row)
            print(f'  {arch} {method}: weights {row["weights_mb"]:.0f} MB, grads '
                  f'{row["grads_mb"]:.0f} MB, optimizer {row["optimizer_mb"]:.0f} MB, '
                  f'activations {row["activations_mb"]:.0f} MB, peak {row["peak_gb"]:.2f} GB '
                  f'({time.perf_counter() - tic:.1f} s)', flush=True)
            if args.breakdown:
                print(f'    at the peak, besides weights, gradients and optimizer state '
                      f'({row["weights_mb"] + row["grads_mb"] + row["optimizer_mb"]:.0f} MB):')
                for nbytes, count, op, dtype, shape in row.pop('peak_breakdown')[
                        :args.breakdown]:
                    print(f'    {nbytes / MB:9.1f} MB  {count:3d} x {dtype} {list(shape)} '
                          f'from {op}')
    if args.measured:
        add_measured(rows, read_measured(args.measured))
    timed = None
    if args.time:
        print(f'Timing real CPU steps of {args.time_arch}: {", ".join(args.time)}', flush=True)
        timed = time_steps(bench, args)
    paths = write_outputs(args, checks, rows, timed)
    print(Path(paths['md']).read_text())
    print('wrote', ', '.join(paths.values()))
    worst = max(checks, key=lambda c: abs(c['error']), default=None)
    if worst is not None and abs(worst['error']) > args.tolerance:
        sys.exit(f'the estimator is off by {100 * worst["error"]:+.2f} % on a real step '
                 f'({worst["arch"]} {worst["method"]}), more than --tolerance '
                 f'{100 * args.tolerance:g} %')


if __name__ == '__main__':
    main()
