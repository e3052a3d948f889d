"""The demo: transfer of a pre-trained ViT, method against method, on CPU.

Every config ``configs/demo/vit-demo_<method>_<task>.py`` (linear probe, full
fine-tuning, LoRA, DTL, DTL+, and DTL+ on a randomly initialised trunk as the
control) is trained on ``train800val200`` and tested on ``test`` of the mini
VTAB-1k (``mmdtl/datasets/mini_vtab.py``), starting from the shipped backbone
``checkpoints/demo/vit-demo_fashion-mnist.pth``. Each run is a real mmengine
``Runner`` built from the config (``tools/train.py`` + ``tools/test.py`` in one
process, which saves the import cost of two processes per run). After its
test, one more training step of the same runner is measured with the meters of
``tools/analysis/benchmark.py``: bytes autograd saves for backward and the
step's tensor peak (live tensors + the peak of the CPU allocator trace).

Writes ``<work-dir>/demo.md``, ``demo.csv`` and ``demo.png`` (mean accuracy vs
training memory, marker area ~ trainable parameters: the paper's Figure 1).
A run whose ``result.json`` matches its config, seed and backbone is reused;
``--force`` reruns everything.

Examples::

    python tools/misc/transfer_demo.py                     # one seed (make demo)
    python tools/misc/transfer_demo.py --seeds 0 1 2       # the README's table
    python tools/misc/transfer_demo.py --methods dtl+ full --tasks digits
    python tools/misc/transfer_demo.py --val               # train800 -> val200
"""
import argparse
import contextlib
import csv
import hashlib
import json
import os
import os.path as osp
import sys
import time
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

# OpenMP threads that spin while waiting make a step up to 30x slower on a
# busy CPU (measured on the shared 2-core development machine); set before
# torch is imported. An explicit OMP_WAIT_POLICY wins.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from mmdtl.datasets.mini_vtab import MINI_VTAB_GROUPS, MINI_VTAB_TASKS  # noqa: E402
from mmdtl.utils.cfg_options import parse_cfg_options  # noqa: E402
from mmdtl.utils.checkpoint import file_sha256  # noqa: E402
from mmdtl.utils.stats import mean as _mean  # noqa: E402
from mmdtl.utils.stats import sample_std as _std  # noqa: E402

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
CHECKPOINT = 'checkpoints/demo/vit-demo_fashion-mnist.pth'
VAL_OPTIONS = {
    'train_dataloader.dataset.split': 'train800',
    'test_dataloader.dataset.split': 'val200',
}
RESULT = 'result.json'


def config_path(method: str, task: str) -> str:
    return osp.join(REPO, CONFIG.format(method=method, task=task))


def check_checkpoint(path: str = CHECKPOINT) -> str:
    """The backbone's SHA-256; an error if it is missing, a note if it is not
    the one recorded in ``SHA256SUMS`` next to it (re-created by the
    pre-training tool, or another file)."""
    full = osp.abspath(path)
    if not osp.isfile(full):
        raise SystemExit(f'Pre-trained backbone {path} not found. It is shipped with the '
                         'repository; re-create it with '
                         'python tools/misc/pretrain_demo_backbone.py')
    digest = file_sha256(full)
    sums = osp.join(osp.dirname(full), 'SHA256SUMS')
    recorded = {}
    if osp.isfile(sums):
        with open(sums, encoding='utf-8') as f:
            recorded = {line.split()[-1]: line.split()[0] for line in f if line.strip()}
    if recorded.get(osp.basename(full)) != digest:
        print(f'Note: {path} has sha256 {digest}, not the one recorded in {sums}: '
              'results will differ from the README.', flush=True)
    return digest


def set_backbone_checkpoint(cfg, checkpoint: str) -> None:
    """Point the config's pre-trained backbone (inside LoRAModel too) at
    ``checkpoint``; a random-trunk config stays random."""
    backbone = cfg.model.backbone
    if backbone.get('type') == 'LoRAModel':
        backbone = backbone.module
    init_cfg = backbone.get('init_cfg')
    if isinstance(init_cfg, dict) and init_cfg.get('type') == 'Pretrained':
        init_cfg.checkpoint = checkpoint


def load_run_config(config: str, seed: int, work_dir: str, options: Optional[dict] = None,
                    val: bool = False, checkpoint: Optional[str] = None):
    """The config of one demo run: trained, then tested once (no validation
    during training, no checkpoints written)."""
    from mmengine.config import Config

    cfg = Config.fromfile(config)
    merged = dict(VAL_OPTIONS) if val else {}
    merged.update(options or {})
    if merged:
        cfg.merge_from_dict(merged)
    if checkpoint:
        set_backbone_checkpoint(cfg, checkpoint)
    cfg.work_dir = work_dir
    cfg.randomness = dict(seed=seed, deterministic=False)
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.train_cfg.pop('val_interval', None)
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=-1, save_last=False)
    return cfg


def _unwrap(model):
    return model.module if hasattr(model, 'module') else model


def measure_step(runner) -> Dict[str, float]:
    """Memory of one more training step of ``runner`` on its first batch:
    activations saved for backward and the step's tensor peak (MB)."""
    from mmdtl.utils import cpu_step_peak_bytes, saved_activation_bytes
    from mmdtl.utils.memory import training_state

    model = _unwrap(runner.model)
    model.train()
    data = next(iter(runner.train_dataloader))
    processed = model.data_preprocessor(data, True)

    def loss_fn():
        loss, _ = model.parse_losses(model(**processed, mode='loss'))
        return loss

    activation = saved_activation_bytes(model, loss_fn)
    runner.optim_wrapper.zero_grad()
    # what lives across steps; the step's own input batch counts in its peak
    live = training_state(model, runner.optim_wrapper.optimizer)
    peak = cpu_step_peak_bytes(lambda: model.train_step(data, runner.optim_wrapper), live)
    return dict(activation_mb=activation / 2**20, tensor_peak_mb=peak / 2**20)


@contextlib.contextmanager
def _output_to(path: str):
    """The run's console output into a file: mmengine's logger, warnings,
    and what C++ code (the profiler) writes to the file descriptors."""
    os.makedirs(osp.dirname(path), exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, 'a') as f:
        try:
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
            with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
                yield
        finally:
            f.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def _close_logger(runner) -> None:
    # The logger outlives the runner (mmengine keeps instances by name); its
    # handlers point at the closed redirected stream.
    for handler in list(runner.logger.handlers):
        runner.logger.removeHandler(handler)
        handler.close()


def train_and_test(cfg, measure: bool = True) -> dict:
    """Train and test one config in this process; accuracy, time, params,
    and (``measure``) the memory of a training step."""
    from mmengine.runner import Runner

    with _output_to(osp.join(cfg.work_dir, 'demo_run.log')):
        runner = Runner.from_cfg(cfg)
        try:
            tic = time.perf_counter()
            runner.train()
            train_s = time.perf_counter() - tic
            tic = time.perf_counter()
            metrics = runner.test()
            test_s = time.perf_counter() - tic
            model = _unwrap(runner.model)
            result = dict(
                top1=float(metrics['accuracy/top1']),
                train_s=train_s,
                test_s=test_s,
                trainable_backbone=sum(p.numel() for p in model.backbone.parameters()
                                       if p.requires_grad),
                trainable_total=sum(p.numel() for p in model.parameters() if p.requires_grad))
            if measure:
                result.update(measure_step(runner))
        finally:
            _close_logger(runner)
    return result


def run_key(cfg, seed: int, backbone_sha: str) -> str:
    """What decides a run's result: its full config, seed and backbone."""
    text = f'{cfg.pretty_text}\nseed={seed}\nbackbone={backbone_sha}'
    return hashlib.sha256(text.encode()).hexdigest()


def run_one(method: str, task: str, seed: int, work_root: str, backbone_sha: str,
            options: Optional[dict] = None, val: bool = False, force: bool = False,
            measure: bool = True, checkpoint: Optional[str] = None) -> dict:
    """One run, reused when its ``result.json`` has the same key."""
    from mmdtl.utils.checkpoint import _write_text_atomic

    stem = osp.basename(config_path(method, task))[:-3]
    work_dir = osp.join(work_root, f'seed{seed}', stem)
    cfg = load_run_config(config_path(method, task), seed, work_dir, options, val, checkpoint)
    key = run_key(cfg, seed, backbone_sha)
    path = osp.join(work_dir, RESULT)
    if not force and osp.isfile(path):
        with open(path) as f:
            record = json.load(f)
        if record.get('key') == key and (record.get('activation_mb') is not None
                                         or not measure):
            record['reused'] = True
            return record
    record = dict(method=method, task=task, seed=seed, key=key,
                  config=osp.relpath(config_path(method, task), REPO),
                  lr=cfg.optim_wrapper.optimizer.lr, **train_and_test(cfg, measure))
    _write_text_atomic(path, json.dumps(record, indent=2))
    return record


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


def to_markdown(rows: 'OrderedDict[str, dict]', tasks: Sequence[str]) -> str:
    groups = [g for g in MINI_VTAB_GROUPS if all(t in tasks for t in MINI_VTAB_GROUPS[g])]
    header = (['method'] + list(tasks) + [g.capitalize() for g in groups] +
              ['Mean', 'trainable (backbone)', 'activations saved', 'step tensor peak',
               'train time / task'])
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for method, row in rows.items():
        cells = [METHODS.get(method, method)] + [_cell(row[t]) for t in tasks]
        cells += [_cell(row[g]) for g in groups] + [_cell(row['mean'])]
        cells.append(f'{row["trainable_backbone"]:,}')
        for key, unit in (('activation_mb', 'MB'), ('tensor_peak_mb', 'MB')):
            cells.append('-' if row[key] is None else f'{row[key]:.2f} {unit}')
        cells.append(f'{row["train_s"]:.1f} s')
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def to_csv(path: str, rows: 'OrderedDict[str, dict]', tasks: Sequence[str]) -> None:
    groups = [g for g in MINI_VTAB_GROUPS if all(t in tasks for t in MINI_VTAB_GROUPS[g])]
    cols = list(tasks) + groups + ['mean']
    tmp = f'{path}.{os.getpid()}.tmp'
    with open(tmp, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['method'] + [f'{c}{s}' for c in cols for s in ('', '_std', '_n')] +
                        ['trainable_backbone', 'activation_mb', 'tensor_peak_mb', 'train_s'])
        for method, row in rows.items():
            out = [method]
            for c in cols:
                out += ['', '', ''] if row[c] is None else [f'{row[c][0]:.2f}',
                                                             f'{row[c][1]:.2f}', row[c][2]]
            out += [row['trainable_backbone']] + [
                '' if row[k] is None else f'{row[k]:.3f}'
                for k in ('activation_mb', 'tensor_peak_mb', 'train_s')]
            writer.writerow(out)
    os.replace(tmp, path)


def plot(path: str, rows: 'OrderedDict[str, dict]', title: str) -> None:
    """Mean top-1 vs the step's tensor peak; marker area ~ trainable params."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    points = [(m, r) for m, r in rows.items()
              if r['tensor_peak_mb'] is not None and (r['mean'] or _first_cell(r))]
    largest = max([r['trainable_backbone'] for _, r in points] + [1])
    span = max([r['tensor_peak_mb'] for _, r in points] + [1])
    fig, ax = plt.subplots(figsize=(7, 5))
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
    tmp = f'{path}.{os.getpid()}.tmp.png'
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def _first_cell(row: dict):
    return next((v for k, v in row.items() if k in MINI_VTAB_TASKS and v is not None), None)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Transfer the shipped pre-trained ViT with every method; table + plot.')
    parser.add_argument('--seeds', nargs='+', type=int, default=[0])
    parser.add_argument('--methods', nargs='+', default=list(METHODS), choices=list(METHODS))
    parser.add_argument('--tasks', nargs='+', default=list(MINI_VTAB_TASKS),
                        choices=list(MINI_VTAB_TASKS))
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--data-root', default='data/mini-vtab',
                        help='mini VTAB-1k root (written there when missing)')
    parser.add_argument('--fashion-mnist', dest='fashion_source',
                        help='folder with t10k-*-ubyte[.gz] (default: data/fashion-mnist, then '
                        '/usr/share/datasets/fashion-mnist)')
    parser.add_argument('--checkpoint', default=CHECKPOINT,
                        help='pre-trained backbone to transfer (default: the shipped one)')
    parser.add_argument('--val', action='store_true',
                        help='train on train800 and test on val200 (the lr-sweep protocol)')
    parser.add_argument('--force', action='store_true', help='rerun finished runs')
    parser.add_argument('--cfg-options', nargs='+', default=[],
                        help='KEY=VALUE overrides given to every run')
    args = parser.parse_args(argv)
    for kv in args.cfg_options:
        if '=' not in kv or not kv.split('=', 1)[0]:
            parser.error(f'--cfg-options: expected KEY=VALUE, got {kv!r}')
    return args


def prepare(args) -> str:
    """Check the backbone, write the tasks; the backbone's SHA-256."""
    import mmdtl  # noqa: F401  (registries)
    from mmdtl.datasets.mini_vtab import write_mini_vtab

    sha = check_checkpoint(args.checkpoint)
    try:
        write_mini_vtab(args.data_root, args.fashion_source)
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from e
    return sha


def data_options(data_root: str) -> dict:
    return {f'{loader}.dataset.data_root': data_root
            for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')}


def main(argv=None) -> int:
    args = parse_args(argv)
    sha = prepare(args)
    options = data_options(args.data_root)
    options.update(parse_cfg_options(args.cfg_options))
    work_root = osp.abspath(args.work_dir) + ('_val' if args.val else '')
    plan = [(s, m, t) for s in args.seeds for m in args.methods for t in args.tasks]
    print(f'Demo: {len(plan)} runs ({len(args.methods)} methods x {len(args.tasks)} tasks x '
          f'{len(args.seeds)} seed(s)) from {args.checkpoint} (sha256 {sha[:12]}...), '
          f'{"train800 -> val200" if args.val else "train800val200 -> test"}; '
          f'logs in {work_root}', flush=True)
    start = time.time()
    records = []
    for i, (seed, method, task) in enumerate(plan, 1):
        record = run_one(method, task, seed, work_root, sha, options, args.val, args.force,
                         checkpoint=osp.abspath(args.checkpoint))
        records.append(record)
        done = 'reused' if record.get('reused') else (
            f'train {record["train_s"]:.1f} s, test {record["test_s"]:.1f} s')
        print(f'[{i:2d}/{len(plan)}] seed {seed} {method:16s} {task:10s} top-1 '
              f'{record["top1"]:5.1f} %  ({done}; {time.time() - start:.0f} s elapsed)',
              flush=True)

    rows = summarize(records, args.tasks)
    protocol = 'val200 (trained on train800)' if args.val else 'test (trained on train800val200)'
    title = (f'Mini VTAB-1k top-1 (%) on {protocol}, ViT 6x96 pre-trained on Fashion-MNIST, '
             f'seeds {args.seeds}')
    table = to_markdown(rows, args.tasks)
    notes = ('Mean = mean of the group means; ± = std over seeds. Trainable parameters: '
             'backbone only (the head adds 97 x classes). Memory of one training step, '
             'batch 32, CPU fp32: bytes saved for backward (parameters excluded) and the '
             "step's tensor peak; train time per task, mean over runs.")
    os.makedirs(work_root, exist_ok=True)
    from mmdtl.utils.checkpoint import _write_text_atomic
    _write_text_atomic(osp.join(work_root, 'demo.md'), f'# {title}\n\n{table}\n{notes}\n')
    to_csv(osp.join(work_root, 'demo.csv'), rows, args.tasks)
    plot(osp.join(work_root, 'demo.png'), rows,
         f'Mini VTAB-1k: accuracy vs training memory (marker area ~ trainable '
         f'parameters)\n{protocol}, seeds {args.seeds}')
    print(f'\n{title}\n\n{table}\n{notes}\n')
    print(f'Wrote {work_root}/demo.md, demo.csv and demo.png in '
          f'{(time.time() - start) / 60:.1f} min', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
