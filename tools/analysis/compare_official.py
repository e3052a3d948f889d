"""Measure mmdtl against the released DTL code on the same machine and inputs.

The released code (github heekhero/DTL, timm 0.5.4 ViT) is not a dependency
of mmdtl: point ``--official-repo`` at a checkout of it and make timm 0.5.4
importable, e.g.::

    pip install --no-deps --target /tmp/timm054 timm==0.5.4
    PYTHONPATH=/tmp/timm054 python tools/analysis/compare_official.py \\
        --official-repo /path/to/DTL --batch-size 4

Both DTL+ models get the same weights (the official state dict converted by
``tools/model_converters/official_dtl_to_mmdtl.py``) and must give the same
logits, then full fine-tuning and DTL+ of both code bases are measured with
the profiler of ``benchmark.py`` (activation bytes saved for backward, median
training step and inference throughput), with the same measurement options
(``--batch-size``, ``--device``, ``--cpu-bf16``, ``--epoch-batches``, ...: see
``benchmark.add_profile_args``). Writes ``compare_official.md`` and ``.csv``
under ``--work-dir``.

``--mmdtl-only`` measures the mmdtl half alone (no checkout needed), on any
``--arch`` of ``benchmark.py``, e.g. the tiny test arch::

    python tools/analysis/compare_official.py --mmdtl-only --arch vit-tiny-test \\
        --img-size 32 --batch-size 2
"""
import argparse
import csv
import importlib.util
import os.path as osp
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RECIPE = dict(rank=2, taps=list(range(12)), start=6, kernel=3, beta=100., drop_path=0.1)


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The profiler and its options (one definition for both tools).
bench = _load(HERE / 'benchmark.py', 'mmdtl_benchmark')


def official_vit(repo: str, num_classes: int, dtl: bool):
    """The released ViT-B/16 (DTL+ recipe, or plain timm ViT for full FT)."""
    if not osp.isfile(osp.join(repo, 'models', 'vision_transformer.py')):
        raise SystemExit(f'--official-repo {repo}: models/vision_transformer.py not found; '
                         f'pass a checkout of the released DTL code')
    sys.path.insert(0, repo)
    try:
        from models import vision_transformer as official
    except ImportError as err:
        raise SystemExit(f'cannot import the released code from {repo} ({err}); it needs '
                         f'timm 0.5.4 on PYTHONPATH (see this file\'s docstring)') from err
    taps = [str(i) for i in RECIPE['taps']] if dtl else []
    adds = [str(i) for i in range(RECIPE['start'], 12)] if dtl else []
    model = official.vit_base_patch16_224_in21k(
        pretrained=False, num_classes=num_classes, drop_path_rate=RECIPE['drop_path'],
        r=RECIPE['rank'], lora_before_blocks=taps, add_after_blocks=adds,
        fusion_size=RECIPE['kernel'] if dtl else 0, beta=RECIPE['beta'])
    if dtl:  # the release's mark_trainable_parameters
        for name, param in model.named_parameters():
            param.requires_grad = 'lora_' in name or name.startswith('head.')
    return model


def mmdtl_classifier(state_dict, num_classes: int):
    """The classifier of configs/dtl/vit-b_vtab-cifar.py with those weights."""
    from mmengine.config import Config
    from mmpretrain.models import build_classifier

    import mmdtl  # noqa: F401
    cfg = Config.fromfile(str(REPO / 'configs/dtl/vit-b_vtab-cifar.py'))
    cfg.model.backbone.init_cfg = None
    cfg.model.head.num_classes = num_classes
    model = build_classifier(cfg.model)
    model.load_state_dict(state_dict, strict=True)
    return model


class Logits(torch.nn.Module):
    """mmpretrain classifier as images -> logits."""

    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier
        self.backbone = classifier.backbone

    def forward(self, images):
        return self.classifier(images, mode='tensor')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--official-repo', help='a checkout of heekhero/DTL')
    parser.add_argument('--mmdtl-only', action='store_true',
                        help='measure only the mmdtl half (no released code needed)')
    parser.add_argument('--arch', default='vit-b',
                        help='the mmdtl half\'s arch (an --arch of benchmark.py); the '
                             'released code is ViT-B/16 only')
    bench.add_profile_args(parser, batch_size=4, warmup=1, repeats=3)
    parser.add_argument('--work-dir', default='work_dirs/compare_official')
    args = parser.parse_args(argv)
    bench.check_profile_args(parser, args)
    if not args.mmdtl_only:
        if not args.official_repo:
            parser.error('--official-repo is required (or --mmdtl-only)')
        if args.arch != 'vit-b' or args.img_size != 224:
            parser.error('the released ViT-B/16 runs only with --arch vit-b --img-size 224 '
                         '(14x14 grid); use --mmdtl-only for other settings')
    return args


def mmdtl_variants(args, ours=None) -> list:
    """(name, builder, backbone-parameter getter) of the mmdtl half; ``ours``:
    the DTL+ classifier with the released weights (default: a fresh one)."""

    def build(method):
        return lambda: bench.build_model(args.arch, method, args.num_classes, args.img_size)

    return [
        ('mmdtl: full fine-tuning', build('full'), None),
        ('mmdtl: DTL+', (lambda: ours) if ours is not None else build('dtl+'), None),
        ('mmdtl: DTL+ suffix checkpointed', build('dtl+ckpt'), None),
    ]


def measure(args, variants) -> list:
    rows = []
    for i, (name, build, backbone_of) in enumerate(variants, 1):
        print(f'[{i}/{len(variants)}] {name} ...', flush=True)
        torch.manual_seed(0)
        model = build()
        params = backbone_of(model) if backbone_of else model.backbone.parameters()
        row = dict(method=name, **bench.profile(model, params, args))
        rows.append(row)
        print(f'    activations {row["activation_mb"]:.1f} MB  step {row["step_ms"]:.0f} ms',
              flush=True)
        del model
    return rows


def write_outputs(args, rows, diff=None) -> Path:
    columns = ['method', 'trainable_backbone', 'activation_mb', 'step_ms', 'infer_img_s',
               'epoch1_s', 'epoch2_s']
    work_dir = Path(args.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    what = 'mmdtl' if args.mmdtl_only else 'mmdtl vs the released DTL code'
    lines = [f'# {what}: {args.arch}, {args.img_size}px, batch {args.batch_size}, '
             f'{args.device}', '']
    if diff is not None:
        lines += [f'Same weights: max |logit difference| {diff:.1e}.', '']
    lines += ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
    lines += ['| ' + ' | '.join(bench.fmt(r[c]) for c in columns) + ' |' for r in rows]
    (work_dir / 'compare_official.md').write_text('\n'.join(lines) + '\n')
    with open(work_dir / 'compare_official.csv', 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction='ignore')
        writer.writeheader()
        writer.writerows(rows)
    print('\n'.join(lines))
    return work_dir


def main(argv=None):
    args = parse_args(argv)
    if args.mmdtl_only:
        return write_outputs(args, measure(args, mmdtl_variants(args)))
    converter = _load(REPO / 'tools/model_converters/official_dtl_to_mmdtl.py', 'dtl_converter')

    torch.manual_seed(0)
    official_dtl = official_vit(args.official_repo, args.num_classes, dtl=True)
    for name, param in official_dtl.named_parameters():
        if 'lora_B' in name or name.startswith('head.'):
            torch.nn.init.normal_(param, std=0.02)  # an active side network
    state_dict, _ = converter.convert_official(official_dtl.state_dict(), 'released model')
    ours = Logits(mmdtl_classifier(state_dict, args.num_classes))
    images = torch.randn(2, 3, 224, 224)
    official_dtl.eval()
    ours.eval()
    with torch.no_grad():
        diff = (official_dtl(images) - ours(images)).abs().max().item()
    print(f'same weights, max |logit difference| = {diff:.2e}', flush=True)
    if diff > 1e-3:
        raise SystemExit('the two implementations disagree; not comparing them')

    def official_backbone(model):
        return [p for n, p in model.named_parameters() if not n.startswith('head.')]

    variants = [
        ('released: full fine-tuning',
         lambda: official_vit(args.official_repo, args.num_classes, dtl=False), official_backbone),
        ('released: DTL+', lambda: official_dtl, official_backbone),
    ] + mmdtl_variants(args, ours)
    return write_outputs(args, measure(args, variants), diff)


if __name__ == '__main__':
    main()
