"""Side-by-side memory and speed benchmark of fine-tuning methods: the
models, the training step, what is measured and the machine that measured it.

``tools/analysis/benchmark.py`` is its command line (which documents every
figure); ``memory_scaling``, ``compare_official`` and the GPU check build
the same models and steps from here. From Python::

    from mmdtl.analysis.benchmark import benchmark_config
    rows = benchmark_config('configs/dtl/vit-b_vtab-cifar.py', methods=['full', 'dtl+'],
                            batch_size=4, device='cpu')
    print({r['method']: r['activation_mb'] for r in rows})

Each method runs in its own process by default (``isolated``), so that the
CPU's peak resident memory is its own.
"""
import argparse
import dataclasses
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Union

import torch

from mmdtl.models.dtl import HALF_SUFFIX, DTLOptions, preset_names, preset_options
from mmdtl.utils.report import markdown_table, new_figure, save_figure, write_csv, write_markdown

ARCHS = {
    # name: (backbone cfg, embed dims, DTL csn cfg of the released recipe)
    'vit-b': (dict(type='VisionTransformer', arch='b', img_size=224, patch_size=16),
              dict(rank=2, taps=list(range(12)), start=6, kernel=3)),
    'swin-b': (dict(type='SwinTransformer', arch='base', img_size=224),
               dict(rank=4, taps=list(range(4, 24)), start=14, kernel=5)),
    # A tiny arch for tests and quick checks.
    'vit-tiny-test': (dict(type='VisionTransformer', img_size=32, patch_size=8,
                           arch=dict(embed_dims=32, num_layers=4, num_heads=2,
                                     feedforward_channels=64)),
                      dict(rank=2, taps=list(range(4)), start=2, kernel=3)),
}
# The baselines; every DTL method is a preset of mmdtl.models.dtl.PRESETS.
BASELINES = ['full', 'linear', 'lora']
# The default run.
METHODS = BASELINES + ['dtl', 'dtl+', 'dtl+ckpt', 'dtl+cache', 'dtl+packed', 'dtl+cache+packed']
# Frozen weights stored in the AMP dtype (not in the default list).
HALF_METHODS = [name for name in preset_names() if name.endswith(HALF_SUFFIX)]
ALL_METHODS = BASELINES + preset_names()
# Backbone options that only DTL backbones have: dropped to build the parent.
_DTL_ONLY = ('csn', *DTLOptions.names(), 'init_cfg')
# --arch prefix of each mmpretrain parent; LoRA targets where not qkv.
KINDS = {'VisionTransformer': 'vit', 'SwinTransformer': 'swin', 'DeiT3': 'deit3',
         'BEiTViT': 'beit', 'ConvNeXt': 'convnext', 'ViTEVA02': 'eva02'}
# BEiT: None, mmpretrain's LoRAModel cannot wrap its qkv (the attention reads
# qkv.weight directly).
LORA_TARGETS = {'ConvNeXt': [dict(type='pointwise_conv1'), dict(type='pointwise_conv2')],
                'BEiTViT': None}
COLUMNS = ['method', 'trainable_backbone', 'trainable_total', 'activation_mb',
           'activation_vs_full', 'peak_mb', 'peak_kind', 'tensor_peak_mb', 'step_ms',
           'step_vs_full', 'others_cpu', 'epoch1_s', 'epoch2_s', 'epoch_others_cpu',
           'infer_img_s']
# What measured a row: in every CSV row, once above the markdown table.
MACHINE_COLUMNS = ['device_name', 'torch_version']


def _zoos() -> dict:
    from mmpretrain.models import backbones
    return {kind: getattr(getattr(backbones, parent), 'arch_zoo', None)
            or getattr(backbones, parent).arch_settings for parent, kind in KINDS.items()}


def arch_names() -> list:
    """Every ``--arch``: the entries of :data:`ARCHS` and ``<kind>-<name>``
    for each arch name (aliases included) of the zoos of :data:`KINDS`."""
    return sorted(set(ARCHS) | {f'{kind}-{name}' for kind, zoo in _zoos().items()
                                for name in zoo})


def arch_entry(arch: str) -> tuple:
    """(backbone cfg, DTL recipe) of an ``--arch``.

    Zoo archs get the released recipes scaled to their depth. Plain ViTs
    (ViT, DeiT3, BEiT): rank 2, taps at every block, ``M`` = half the depth,
    3x3 DWConv (ViT-B: the released ``M=6``); patch size 14 for the archs
    pre-trained that way (ViT-H, EVA-g, DINOv2), else 16. Hierarchical trunks
    (Swin, ConvNeXt): the Swin-B recipe, rank 4, taps from the third stage on,
    ``M`` 5/9 into it, 5x5 DWConv (Swin-B: the released taps 4-23, ``M=14``).
    """
    if arch in ARCHS:
        return ARCHS[arch]
    kind, _, name = arch.partition('-')
    zoo = _zoos().get(kind, {})
    if name not in zoo:
        raise ValueError(f'--arch {arch!r} is not known; choose from {arch_names()}')
    settings = zoo[name]
    parent = {k: p for p, k in KINDS.items()}[kind]
    if 'depths' not in settings:
        depth = settings['num_layers']
        patch = 14 if settings['embed_dims'] in (1280, 1408, 1536) or 'dinov2' in name else 16
        return (dict(type=parent, arch=name, img_size=224, patch_size=patch),
                dict(rank=2, taps=list(range(depth)), start=depth // 2, kernel=3))
    first = sum(settings['depths'][:2])
    third = settings['depths'][2]
    backbone = dict(type=parent, arch=name)
    if parent == 'SwinTransformer':
        backbone['img_size'] = 224
    return (backbone, dict(rank=4, taps=list(range(first, sum(settings['depths']))),
                           start=first + round(third * 5 / 9), kernel=5))


def config_entry(path: str) -> tuple:
    """(backbone cfg, DTL recipe) of a config file's ``model.backbone``: its
    parent backbone and, for a DTL backbone, its side network's recipe (else
    the recipe of the matching ``--arch``). Checkpoints are not loaded:
    memory and speed do not depend on weight values."""
    from mmengine.config import Config

    from mmdtl.models.backbones import DTL_PARENTS

    cfg = Config.fromfile(path)
    backbone = cfg.get('model', {}).get('backbone')
    if backbone is None:
        raise ValueError(f'{path}: no model.backbone in this config')
    backbone = backbone.to_dict()
    kind = backbone['type'].split('.')[-1]
    if kind not in (*DTL_PARENTS, *DTL_PARENTS.values()):
        raise ValueError(f'{path}: model.backbone.type={backbone["type"]!r}; the benchmark '
                         f'needs a DTL backbone or its parent, one of '
                         f'{sorted({*DTL_PARENTS, *DTL_PARENTS.values()})}')
    csn = backbone.get('csn') or {}
    parent = dict(type=DTL_PARENTS.get(kind, kind),
                  **{k: v for k, v in backbone.items() if k not in (*_DTL_ONLY, 'type')})
    if csn:
        recipe = dict(rank=csn.get('rank', 2), taps=csn.get('taps'),
                      start=csn.get('start', 6), kernel=csn.get('dwconv_kernel', 3))
    else:
        default_arch = 'tiny' if parent['type'] == 'ConvNeXt' else 'base'
        recipe = arch_entry(f'{KINDS[parent["type"]]}-{parent.get("arch", default_arch)}')[1]
    return parent, recipe


class Classifier(torch.nn.Module):
    """Backbone + (Swin: global average pooling) + linear head."""

    def __init__(self, backbone: torch.nn.Module, num_classes: int, img_size: int):
        super().__init__()
        self.backbone = backbone
        with torch.no_grad():
            probe = torch.zeros(1, input_channels(backbone), img_size, img_size)
            dims = self.features(probe).shape[-1]
        self.head = torch.nn.Linear(dims, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        feat = self.backbone(images)[-1]
        return feat.mean(dim=(2, 3)) if feat.dim() == 4 else feat

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def build_model(arch, method: str, num_classes: int, img_size: int,
                half_dtype: str = 'bfloat16') -> Classifier:
    """``arch``: an ``--arch`` name or a (backbone cfg, recipe) pair;
    ``half_dtype``: the storage dtype of the ``*_half`` methods."""
    from mmpretrain.registry import MODELS

    from mmdtl.models.backbones import DTL_PARENTS
    from mmdtl.utils.config_memory import quiet_logger

    backbone, recipe = arch_entry(arch) if isinstance(arch, str) else arch
    backbone = dict(backbone)
    parent = backbone['type']
    if parent == 'VisionTransformer':  # the released head: pooled patch tokens
        backbone.update(out_type='avg_featmap', final_norm=False)
    if method == 'lora':
        targets = LORA_TARGETS.get(parent, [dict(type='qkv')])
        if targets is None:
            raise ValueError(f'lora: mmpretrain\'s LoRAModel cannot wrap {parent}; leave '
                             f'lora out of --methods')
        backbone = dict(type='LoRAModel', module=backbone, rank=8, alpha=8, targets=targets)
    elif method not in BASELINES:
        dwconv, options = preset_options(method, half_dtype)
        backbone.update(options)
        backbone['type'] = {p: d for d, p in DTL_PARENTS.items()}[parent]
        backbone['csn'] = dict(
            type='CompactSideNetwork', rank=recipe['rank'], taps=recipe['taps'],
            start=recipe['start'], dwconv_kernel=recipe['kernel'] if dwconv else 0)
        if DTLOptions(**options).needs_deterministic_prefix:
            # A cached or recomputed prefix must be deterministic (Swin's
            # default drop path is 0.1). Warm cache: the first
            # (activation-measuring) step fills it.
            backbone['drop_path_rate'] = 0.
    with quiet_logger():  # LoRAModel's init_weights logs a line per parameter
        backbone = MODELS.build(backbone)
    if method == 'linear':
        backbone.requires_grad_(False)
    return Classifier(backbone, num_classes, img_size)


def measure(args, method: str) -> dict:
    """All figures of one method, measured in this process."""
    torch.manual_seed(0)
    half_dtype = 'float16' if args.device.startswith('cuda') and args.amp else 'bfloat16'
    model = build_model(resolve_arch(args), method, args.num_classes, args.img_size, half_dtype)
    return dict(method=method, **profile(model, model.backbone.parameters(), args))


def resolve_arch(args) -> tuple:
    """(backbone cfg, recipe) of ``args``: the config file's, else ``--arch``'s."""
    return config_entry(args.config) if getattr(args, 'config', None) else arch_entry(args.arch)


def make_train_step(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                    amp: bool, foreach=None) -> tuple:
    """``(loss_fn, train_step, optimizer)`` of the benchmarked step: AMP
    (fp16 on a GPU, bf16 on CPU) when ``amp``, cross-entropy, backward,
    AdamW on the trainable parameters (``foreach`` as ``torch.optim.AdamW``:
    by default multi-tensor on a GPU, per tensor on CPU)."""
    device_type = images.device.type
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, foreach=foreach)
    amp_dtype = torch.float16 if device_type == 'cuda' else torch.bfloat16

    def loss_fn(images=images, labels=labels):
        with torch.autocast(device_type, enabled=amp, dtype=amp_dtype):
            return torch.nn.functional.cross_entropy(model(images), labels)

    # Loss scaling is for fp16 gradients only.
    scaler = torch.amp.GradScaler(device_type, enabled=amp and amp_dtype == torch.float16)

    def train_step(images=images, labels=labels):
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss_fn(images, labels)).backward()
        scaler.step(optimizer)
        scaler.update()

    return loss_fn, train_step, optimizer


def input_channels(model: torch.nn.Module) -> int:
    """The channels the model reads: its first convolution's (the patch
    embedding or stem of every trunk benchmarked), else 3."""
    first = next((m for m in model.modules() if isinstance(m, torch.nn.Conv2d)), None)
    return first.in_channels if first is not None else 3


def profile(model: torch.nn.Module, backbone_params, args) -> dict:
    """Trainable parameters, activation bytes, peak memory, step time and
    inference throughput of ``model`` (images -> logits) on ``args``'s
    batch; ``backbone_params`` are the parameters counted as backbone."""
    from mmdtl.utils import median_seconds, saved_activation_bytes, synchronize

    device = torch.device(args.device)
    model = model.to(device).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    images = torch.randn(args.batch_size, input_channels(model), args.img_size, args.img_size,
                         device=device)
    labels = torch.randint(0, args.num_classes, (args.batch_size,), device=device)
    amp = args.amp and device.type == 'cuda' or \
        getattr(args, 'cpu_bf16', False) and device.type == 'cpu'
    amp_dtype = torch.float16 if device.type == 'cuda' else torch.bfloat16
    loss_fn, train_step, optimizer = make_train_step(model, images, labels, amp)

    def timed(fn) -> float:
        return median_seconds(fn, device, args.warmup, args.repeats)

    result = dict()
    result['trainable_backbone'] = sum(p.numel() for p in backbone_params if p.requires_grad)
    result['trainable_total'] = sum(p.numel() for p in trainable)
    result['activation_mb'] = saved_activation_bytes(model, loss_fn) / 2**20
    if device.type == 'cuda':
        torch.cuda.reset_peak_memory_stats()
    step_s, result['others_cpu'] = least_disturbed(lambda: timed(train_step), args)
    result['step_ms'] = 1000 * step_s
    if device.type == 'cuda':
        result['peak_mb'] = result['tensor_peak_mb'] = torch.cuda.max_memory_allocated() / 2**20
        result['peak_kind'] = 'cuda max allocated'
    else:
        result['peak_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result['peak_kind'] = 'process peak RSS'
        result['tensor_peak_mb'] = cpu_tensor_peak_bytes(model, optimizer, train_step,
                                                         [images, labels]) / 2**20
    result['epoch1_s'] = result['epoch2_s'] = result['epoch_others_cpu'] = None
    if args.epoch_batches:
        def two_epochs() -> tuple:
            # Two passes over the same new batches: a prefix cache fills during
            # the first and serves the second, as epochs 1 and 2 of training.
            epoch = [(torch.randn_like(images), torch.randint_like(labels, args.num_classes))
                     for _ in range(args.epoch_batches)]
            seconds = []
            for _ in range(2):
                synchronize(device)
                tic = time.perf_counter()
                for batch in epoch:
                    train_step(*batch)
                synchronize(device)
                seconds.append(time.perf_counter() - tic)
            return tuple(seconds)

        (result['epoch1_s'], result['epoch2_s']), result['epoch_others_cpu'] = \
            least_disturbed(two_epochs, args)

    model.eval()
    with torch.no_grad(), torch.autocast(device.type, enabled=amp, dtype=amp_dtype):
        result['infer_img_s'] = args.batch_size / timed(lambda: model(images))
    return result


def least_disturbed(measure, args) -> tuple:
    """``(measure(), others_cpu)``; with ``args.max_others`` set, measured
    again (after ``args.quiet_wait`` s) while other processes used more than
    that share of the CPUs, at most ``args.quiet_retries`` more times, and
    the least disturbed measurement kept."""
    best = None
    retries = args.quiet_retries if args.max_others is not None else 0
    for attempt in range(1 + retries):
        if attempt:
            time.sleep(args.quiet_wait)
        load = OthersLoad()
        value = measure()
        others = load.fraction()
        if best is None or (others is not None and others < best[1]):
            best = (value, others)
        if others is None or args.max_others is None or others <= args.max_others:
            break
    return best


def cpu_tensor_peak_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                          train_step, inputs: list) -> int:
    """Peak tensor bytes of one more ``train_step`` on CPU, counting what
    lives across steps: parameters, buffers, the last step's gradients (the
    step frees them), optimizer state, the inputs, features in a prefix cache
    and packed frozen weights."""
    from mmdtl.utils.memory import cpu_step_peak_bytes, training_state

    live = training_state(model, optimizer) + list(inputs)
    held = 0  # stores outside the parameters
    for module in model.modules():
        for store in (getattr(module, 'prefix_cache', None),
                      getattr(module, 'frozen_linear_packs', None)):
            held += store.nbytes if store is not None else 0
    return cpu_step_peak_bytes(train_step, live) + held


class OthersLoad:
    """The share of the machine's CPU time that other processes (and the
    hypervisor: steal) used from construction to :meth:`fraction`, from
    ``/proc/stat`` and this process's own CPU time. Near 0 on an idle
    machine; a step time measured while it is high is slower than the
    machine's (on a 2-core machine 0.1 can cost 20 %: threads wait for each
    other). None where ``/proc/stat`` cannot be read."""

    def __init__(self):
        self.start = self._sample()

    @staticmethod
    def _sample():
        try:
            with open('/proc/stat') as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        # user nice system idle iowait irq softirq steal (guest is in user)
        busy = sum(fields[:3]) + sum(fields[5:8])
        times = os.times()
        return (busy / os.sysconf('SC_CLK_TCK'), times.user + times.system,
                time.perf_counter())

    def fraction(self):
        end = self._sample()
        if self.start is None or end is None:
            return None
        busy, own, wall = (e - s for e, s in zip(end, self.start))
        if wall <= 0:
            return None
        return round(min(max((busy - own) / (wall * (os.cpu_count() or 1)), 0.), 1.), 3)


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``'s model name, with family and model
    numbers, which tell generations apart where a hypervisor shows only
    "AMD EPYC"), logical CPUs, torch threads and the vector ISA torch's
    kernels use."""
    fields = {}
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if not line.strip():
                    break  # the first processor is enough
                key, _, value = line.partition(':')
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get('model name') or platform.processor() or platform.machine() or 'CPU'
    if 'cpu family' in fields and 'model' in fields:
        name += f' (family {fields["cpu family"]} model {fields["model"]})'
    isa = getattr(torch.backends.cpu, 'get_cpu_capability', lambda: None)()
    return (f'{name}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads'
            + (f', {isa}' if isa else ''))


def machine_info(device: str) -> dict:
    """:data:`MACHINE_COLUMNS` of ``device``: the GPU's name or
    :func:`cpu_name`, and the PyTorch version (CUDA's too on a GPU)."""
    if device.startswith('cuda'):
        name = torch.cuda.get_device_name(torch.device(device))
        version = f'{torch.__version__} (CUDA {torch.version.cuda})'
    else:
        name, version = cpu_name(), torch.__version__
    return dict(device_name=name, torch_version=version)


def add_ratios(rows: list) -> None:
    """Set each row's ``activation_vs_full`` and ``step_vs_full`` (NaN
    without a ``full`` row)."""
    full = next((r for r in rows if r['method'] == 'full'), None)
    for row in rows:
        row['activation_vs_full'] = (row['activation_mb'] / full['activation_mb']
                                     if full and full['activation_mb'] else float('nan'))
        row['step_vs_full'] = row['step_ms'] / full['step_ms'] if full else float('nan')


def fmt(value) -> str:
    """A table cell: ``-`` for None, 3 decimals below 10, thousands separators."""
    if value is None:
        return '-'
    if isinstance(value, float):
        return f'{value:.3f}' if abs(value) < 10 else f'{value:.1f}'
    if isinstance(value, int):
        return f'{value:,}'
    return str(value)


def default_device() -> str:
    """``'cuda'`` where a GPU is there, else ``'cpu'``."""
    return 'cuda' if torch.cuda.is_available() else 'cpu'


@dataclasses.dataclass
class BenchmarkSettings:
    """What is benchmarked and how: the options of ``tools/analysis/benchmark.py``.

    The functions of this module read these attributes from an
    ``argparse.Namespace`` of :func:`add_profile_args` just as well.

    Args:
        arch (str): An ``--arch`` (see :func:`arch_names`); ignored with ``config``.
        config (str, optional): A config file whose ``model.backbone`` (and
            side network) is benchmarked instead of ``arch``.
        batch_size (int): Images per training step. Defaults to 32.
        img_size (int): Image side in pixels. Defaults to 224.
        num_classes (int): Classes of the linear head. Defaults to 100.
        device (str): ``'cpu'`` or ``'cuda[:N]'``; defaults to a GPU if there is one.
        amp (bool): fp16 AMP on a GPU. Defaults to True.
        cpu_bf16 (bool): bf16 autocast on CPU. Defaults to False.
        warmup (int): Untimed runs before timing. Defaults to 2.
        repeats (int): Timed runs (the median is kept). Defaults to 5.
        epoch_batches (int): Also time two epochs of this many batches
            (0: not). Defaults to 0.
        max_others (float, optional): Time again while other processes used
            more than this share of the CPUs. Defaults to None (never).
        quiet_retries (int): With ``max_others``: at most this many more tries.
        quiet_wait (float): With ``max_others``: seconds before each new try.
    """
    arch: str = 'vit-b'
    config: Optional[str] = None
    batch_size: int = 32
    img_size: int = 224
    num_classes: int = 100
    device: str = dataclasses.field(default_factory=default_device)
    amp: bool = True
    cpu_bf16: bool = False
    warmup: int = 2
    repeats: int = 5
    epoch_batches: int = 0
    max_others: Optional[float] = None
    quiet_retries: int = 5
    quiet_wait: float = 10.


# What a child process needs to measure one method as its parent would.
_SETTING_NAMES = [f.name for f in dataclasses.fields(BenchmarkSettings)]


def add_profile_args(parser: argparse.ArgumentParser, **defaults) -> None:
    """Add the options :func:`profile` reads (batch, sizes, device,
    precision, repeats, epochs); ``defaults`` override their defaults.
    Shared by ``benchmark.py`` and ``compare_official.py`` so the two cannot
    drift apart."""
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--num-classes', type=int, default=100)
    parser.add_argument('--device', default=default_device())
    parser.add_argument('--no-amp', dest='amp', action='store_false',
                        help='fp32 on GPU too (by default a GPU runs fp16 AMP)')
    parser.add_argument('--cpu-bf16', action='store_true',
                        help='on CPU, run under bf16 autocast (same bytes per element as '
                             'fp16 AMP: tensor_peak_mb then estimates the GPU figure)')
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--epoch-batches', type=int, default=0,
                        help='also time two epochs of this many new batches (epoch1_s, '
                             'epoch2_s): the prefix cache fills in the first')
    parser.add_argument('--max-others', type=float, default=None,
                        help='on a shared machine: time a step (and the epochs) again while '
                             'other processes used more than this share of the CPUs during it '
                             '(others_cpu, e.g. 0.05), keeping the least disturbed run')
    parser.add_argument('--quiet-retries', type=int, default=5,
                        help='with --max-others: at most this many more tries')
    parser.add_argument('--quiet-wait', type=float, default=10.,
                        help='with --max-others: seconds to wait before each new try')
    parser.set_defaults(**defaults)


def profile_settings_problem(args) -> Optional[str]:
    """What is wrong with ``args``'s :func:`add_profile_args` values (None: nothing)."""
    if args.batch_size < 1 or args.repeats < 1 or args.warmup < 0 or args.epoch_batches < 0:
        return '--batch-size and --repeats must be >= 1, --warmup and --epoch-batches >= 0'
    if args.quiet_retries < 0 or args.quiet_wait < 0 or \
            args.max_others is not None and not 0 <= args.max_others <= 1:
        return '--max-others must lie in [0, 1], --quiet-retries and --quiet-wait >= 0'
    return None


def check_profile_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse values of :func:`add_profile_args`'s options that cannot run."""
    problem = profile_settings_problem(args)
    if problem:
        parser.error(problem)


def run_isolated(args, method: str) -> dict:
    """:func:`measure` ``method`` in a fresh process, so that the CPU's
    peak RSS is its own."""
    settings = json.dumps({name: getattr(args, name, None) for name in _SETTING_NAMES})
    code = ('import sys; from mmdtl.analysis.benchmark import _child_main; '
            '_child_main(sys.argv[1], sys.argv[2])')
    # The child imports this very package, wherever it was found.
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [root] + ([os.environ['PYTHONPATH']] if os.environ.get('PYTHONPATH') else [])))
    out = subprocess.run([sys.executable, '-c', code, settings, method], capture_output=True,
                         text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f'benchmark of {method!r} failed:\n{out.stderr[-3000:]}')
    return json.loads(out.stdout.strip().splitlines()[-1])


def _child_main(settings: str, method: str) -> None:
    """The process of :func:`run_isolated`: one method's row as JSON."""
    print(json.dumps(measure(argparse.Namespace(**json.loads(settings)), method)))


def benchmark_methods(args, methods: Sequence[str], isolated: bool = True,
                      log: Optional[Callable[[str], None]] = None) -> List[dict]:
    """The rows of ``methods`` (one dict per method, :data:`COLUMNS`), the
    ratios to full fine-tuning included.

    Args:
        args: A :class:`BenchmarkSettings` or the ``argparse.Namespace`` of
            ``tools/analysis/benchmark.py``.
        methods (Sequence[str]): Names of :data:`ALL_METHODS`.
        isolated (bool): Each method in its own process (the CPU peak RSS is
            then its own). Defaults to True.
        log (Callable, optional): Receives a line before and after each method.
    """
    rows = []
    for i, method in enumerate(methods, 1):
        if log:
            log(f'[{i}/{len(methods)}] {args.config or args.arch} {method} ...')
        row = run_isolated(args, method) if isolated else measure(args, method)
        rows.append(row)
        if log:
            log(f'    trainable {row["trainable_backbone"]:,}  activations '
                f'{row["activation_mb"]:.1f} MB  peak {row["peak_mb"]:.0f} MB  '
                f'tensor peak {row["tensor_peak_mb"]:.0f} MB  '
                f'step {row["step_ms"]:.0f} ms')
    add_ratios(rows)
    return rows


def benchmark_config(config: Optional[Union[str, Path]] = None,
                     methods: Optional[Sequence[str]] = None, *, arch: str = 'vit-b',
                     work_dir: Optional[Union[str, Path]] = None, isolated: bool = True,
                     log: Optional[Callable[[str], None]] = None, **options) -> List[dict]:
    """Benchmark fine-tuning methods on a config's backbone (or an ``arch``).

    Args:
        config (str | Path, optional): A config file; its ``model.backbone``
            and side network are benchmarked. Without it: ``arch``.
        methods (Sequence[str], optional): Names of :data:`ALL_METHODS`;
            defaults to :data:`METHODS`.
        arch (str): An ``--arch`` of :func:`arch_names`. Defaults to 'vit-b'.
        work_dir (str | Path, optional): Also write ``benchmark.md``,
            ``.csv`` and ``.png`` there.
        isolated (bool): Each method in its own process. Defaults to True.
        log (Callable, optional): Receives progress lines.
        **options: Fields of :class:`BenchmarkSettings` (``batch_size``,
            ``device``, ``cpu_bf16``, ``repeats``, ...).

    Returns:
        list[dict]: One row per method, keyed by :data:`COLUMNS` and
        :data:`MACHINE_COLUMNS`.
    """
    unknown = set(options) - set(_SETTING_NAMES) - {'arch', 'config'}
    if unknown:
        raise TypeError(f'benchmark_config: unknown options {sorted(unknown)}; '
                        f'allowed: {_SETTING_NAMES[2:]}')
    settings = BenchmarkSettings(arch=arch, config=None if config is None else str(config),
                                 **options)
    methods = list(METHODS if methods is None else methods)
    bad = [m for m in methods if m not in ALL_METHODS]
    if bad:
        raise ValueError(f'benchmark_config: unknown methods {bad}; choose from {ALL_METHODS}')
    if settings.config is not None and not os.path.isfile(settings.config):
        raise FileNotFoundError(f'config file {settings.config} does not exist')
    if settings.config is None and arch not in arch_names():
        raise ValueError(f'--arch {arch!r} is not known; choose from {arch_names()}')
    problem = profile_settings_problem(settings)
    if problem:
        raise ValueError(f'benchmark_config: {problem}')
    rows = benchmark_methods(settings, methods, isolated, log)
    machine = machine_info(settings.device)
    if work_dir is not None:
        write_outputs(dict(dataclasses.asdict(settings), work_dir=str(work_dir)), rows,
                      machine)
    return [dict(row, **machine) for row in rows]


def write_outputs(args, rows: list, machine: Optional[dict] = None) -> dict:
    """``benchmark.md``, ``benchmark.csv`` and ``benchmark.png`` under
    ``args.work_dir``; returns their paths.

    Args:
        args: The settings (a :class:`BenchmarkSettings`-like object, or a
            dict of its fields) with a ``work_dir``.
        rows (list): :func:`benchmark_methods`'s rows.
        machine (dict, optional): :func:`machine_info` of the device;
            measured here if not given.
    """
    if isinstance(args, dict):
        args = argparse.Namespace(**args)
    work_dir = Path(args.work_dir)
    precision = (' + AMP (fp16)' if args.amp and args.device.startswith('cuda') else
                 ' + bf16 autocast' if args.cpu_bf16 and args.device == 'cpu' else ', fp32')
    name = Path(args.config).stem if args.config else args.arch
    title = f'{name}, {args.img_size}px, batch {args.batch_size}, {args.device}{precision}'
    machine = machine or machine_info(args.device)
    md = write_markdown(
        work_dir / 'benchmark.md',
        f'# Fine-tuning memory and speed: {title}\n\n'
        f'Measured on {machine["device_name"]}, torch {machine["torch_version"]}.\n\n'
        + markdown_table(COLUMNS, rows, fmt))
    csv_path = write_csv(work_dir / 'benchmark.csv', COLUMNS + MACHINE_COLUMNS,
                         [dict(row, **machine) for row in rows])
    png = save_figure(plot(rows, title), work_dir / 'benchmark.png', dpi=120)
    return dict(md=md, csv=csv_path, png=png)


def plot(rows: list, title: str):
    """Activation memory vs trainable backbone parameters, one marker per
    method (the paper's Figure 1); returns the figure."""
    fig, ax = new_figure(figsize=(6, 4.5))
    for i, (row, marker) in enumerate(zip(rows, 'osD^v*PXh<>p')):
        x = max(row['trainable_backbone'], 1)
        ax.scatter(x, row['activation_mb'], s=80, marker=marker, label=row['method'])
        # Methods with equal memory and parameters (DTL variants) would overlap.
        ax.annotate(row['method'], (x, row['activation_mb']), textcoords='offset points',
                    xytext=(8, 4 + 11 * (i % 3)), fontsize=8)
    ax.set_xscale('log')
    ax.set_xlabel('trainable backbone parameters (log)')
    ax.set_ylabel('activation memory saved for backward (MB)')
    ax.set_title(title)
    ax.grid(alpha=.3)
    fig.tight_layout()
    return fig
