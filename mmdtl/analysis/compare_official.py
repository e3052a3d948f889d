"""mmdtl against the released DTL code (github heekhero/DTL, timm 0.5.4 ViT)
on the same machine, inputs and weights.

Both DTL+ models get the same weights (the official state dict converted by
:func:`mmdtl.converters.official_dtl.convert_official`) and must give the
same logits; then full fine-tuning and DTL+ of both code bases are measured
with :func:`mmdtl.analysis.benchmark.profile`. ``tools/analysis/compare_official.py``
is the command line (``--mmdtl-only`` measures the mmdtl half alone).
"""
import os.path as osp
import sys
from pathlib import Path
from typing import Optional

import torch

from mmdtl.analysis import benchmark as bench
from mmdtl.utils.report import markdown_table, write_csv, write_markdown

# The released ViT-B/16 recipe (VTAB-1k).
RECIPE = dict(rank=2, taps=list(range(12)), start=6, kernel=3, beta=100., drop_path=0.1)
# mmdtl's classifier of the same recipe (in a checkout of the repository).
CONFIG = Path(__file__).resolve().parents[2] / 'configs' / 'dtl' / 'vit-b_vtab-cifar.py'
COLUMNS = ['method', 'trainable_backbone', 'activation_mb', 'step_ms', 'infer_img_s',
           'epoch1_s', 'epoch2_s']
# Largest |logit difference| of the same weights that still counts as equal.
MAX_LOGIT_DIFF = 1e-3


def official_vit(repo: str, num_classes: int, dtl: bool):
    """The released ViT-B/16 (DTL+ recipe, or plain timm ViT for full FT).

    Args:
        repo (str): A checkout of heekhero/DTL (its ``models/`` is imported;
            it needs timm 0.5.4 on the path).
        num_classes (int): Classes of the head.
        dtl (bool): The DTL+ model (else plain ViT-B for full fine-tuning).
    """
    if not osp.isfile(osp.join(repo, 'models', 'vision_transformer.py')):
        raise FileNotFoundError(f'--official-repo {repo}: models/vision_transformer.py not '
                                f'found; pass a checkout of the released DTL code')
    sys.path.insert(0, repo)
    try:
        from models import vision_transformer as official
    except ImportError as err:
        raise ImportError(f'cannot import the released code from {repo} ({err}); it needs '
                          f'timm 0.5.4 on PYTHONPATH (see compare_official.py\'s '
                          f'docstring)') from err
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


def mmdtl_classifier(state_dict, num_classes: int, config=CONFIG):
    """The classifier of ``config`` (``configs/dtl/vit-b_vtab-cifar.py``)
    with the weights ``state_dict``."""
    from mmengine.config import Config
    from mmpretrain.models import build_classifier

    import mmdtl  # noqa: F401
    if not osp.isfile(config):
        raise FileNotFoundError(f'{config} not found: the comparison builds mmdtl\'s model '
                                f'from the configs of a checkout of the repository')
    cfg = Config.fromfile(str(config))
    cfg.model.backbone.init_cfg = None
    cfg.model.head.num_classes = num_classes
    model = build_classifier(cfg.model)
    model.load_state_dict(state_dict, strict=True)
    return model


class Logits(torch.nn.Module):
    """An mmpretrain classifier as images -> logits.

    Args:
        classifier (torch.nn.Module): An mmpretrain ``ImageClassifier``.
    """

    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier
        self.backbone = classifier.backbone

    def forward(self, images):
        return self.classifier(images, mode='tensor')


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


def released_variants(args) -> tuple:
    """(variants of both code bases, max |logit difference|): the released
    DTL+ model with an active side network, mmdtl's with its converted
    weights, checked to give the same logits (``RuntimeError`` if not)."""
    from mmdtl.converters.official_dtl import convert_official

    torch.manual_seed(0)
    official_dtl = official_vit(args.official_repo, args.num_classes, dtl=True)
    for name, param in official_dtl.named_parameters():
        if 'lora_B' in name or name.startswith('head.'):
            torch.nn.init.normal_(param, std=0.02)  # an active side network
    state_dict, _ = convert_official(official_dtl.state_dict(), 'released model')
    ours = Logits(mmdtl_classifier(state_dict, args.num_classes))
    images = torch.randn(2, 3, 224, 224)
    official_dtl.eval()
    ours.eval()
    with torch.no_grad():
        diff = (official_dtl(images) - ours(images)).abs().max().item()
    print(f'same weights, max |logit difference| = {diff:.2e}', flush=True)
    if diff > MAX_LOGIT_DIFF:
        raise RuntimeError('the two implementations disagree; not comparing them')

    def official_backbone(model):
        return [p for n, p in model.named_parameters() if not n.startswith('head.')]

    variants = [
        ('released: full fine-tuning',
         lambda: official_vit(args.official_repo, args.num_classes, dtl=False), official_backbone),
        ('released: DTL+', lambda: official_dtl, official_backbone),
    ] + mmdtl_variants(args, ours)
    return variants, diff


def measure(args, variants) -> list:
    """One :func:`mmdtl.analysis.benchmark.profile` row per variant."""
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


def write_outputs(args, rows, diff: Optional[float] = None) -> Path:
    """``compare_official.md`` and ``.csv`` under ``args.work_dir`` (the
    table is printed too); returns the folder."""
    work_dir = Path(args.work_dir)
    what = 'mmdtl' if args.mmdtl_only else 'mmdtl vs the released DTL code'
    lines = [f'# {what}: {args.arch}, {args.img_size}px, batch {args.batch_size}, '
             f'{args.device}', '']
    if diff is not None:
        lines += [f'Same weights: max |logit difference| {diff:.1e}.', '']
    lines += markdown_table(COLUMNS, rows, bench.fmt).splitlines()
    write_markdown(work_dir / 'compare_official.md', '\n'.join(lines) + '\n')
    write_csv(work_dir / 'compare_official.csv', COLUMNS, rows)
    print('\n'.join(lines))
    return work_dir
