"""Measure mmdtl against the released DTL code on the same machine and inputs.

The released code (github heekhero/DTL, timm 0.5.4 ViT) is not a dependency
of mmdtl: point ``--official-repo`` at a checkout of it and make timm 0.5.4
importable, e.g.::

    pip install --no-deps --target /tmp/timm054 timm==0.5.4
    PYTHONPATH=/tmp/timm054 python tools/analysis/compare_official.py \\
        --official-repo /path/to/DTL --batch-size 4

Both DTL+ models get the same weights (the official state dict converted by
``mmdtl.converters.official_dtl``) and must give the same
logits, then full fine-tuning and DTL+ of both code bases are measured with
the profiler of ``benchmark.py`` (activation bytes saved for backward, median
training step and inference throughput), with the same measurement options
(``--batch-size``, ``--device``, ``--cpu-bf16``, ``--epoch-batches``, ...: see
``mmdtl.analysis.benchmark.add_profile_args``). Writes ``compare_official.md`` and ``.csv``
under ``--work-dir``.

``--mmdtl-only`` measures the mmdtl half alone (no checkout needed), on any
``--arch`` of ``benchmark.py``, e.g. the tiny test arch::

    python tools/analysis/compare_official.py --mmdtl-only --arch vit-tiny-test \\
        --img-size 32 --batch-size 2

The comparison lives in :mod:`mmdtl.analysis.compare_official`; this script
maps the command line onto it.
"""
import argparse
import sys

from mmdtl.analysis.benchmark import add_profile_args, check_profile_args
from mmdtl.analysis.compare_official import (
    measure,
    mmdtl_variants,
    released_variants,
    write_outputs,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--official-repo', help='a checkout of heekhero/DTL')
    parser.add_argument('--mmdtl-only', action='store_true',
                        help='measure only the mmdtl half (no released code needed)')
    parser.add_argument('--arch', default='vit-b',
                        help='the mmdtl half\'s arch (an --arch of benchmark.py); the '
                             'released code is ViT-B/16 only')
    add_profile_args(parser, batch_size=4, warmup=1, repeats=3)
    parser.add_argument('--work-dir', default='work_dirs/compare_official')
    args = parser.parse_args(argv)
    check_profile_args(parser, args)
    if not args.mmdtl_only:
        if not args.official_repo:
            parser.error('--official-repo is required (or --mmdtl-only)')
        if args.arch != 'vit-b' or args.img_size != 224:
            parser.error('the released ViT-B/16 runs only with --arch vit-b --img-size 224 '
                         '(14x14 grid); use --mmdtl-only for other settings')
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.mmdtl_only:
        return write_outputs(args, measure(args, mmdtl_variants(args)))
    try:
        variants, diff = released_variants(args)
    except (OSError, ImportError, RuntimeError, ValueError) as e:
        sys.exit(str(e))
    return write_outputs(args, measure(args, variants), diff)


if __name__ == '__main__':
    main()
