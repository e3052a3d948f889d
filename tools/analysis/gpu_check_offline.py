"""The GPU check on the offline GPU machine, within 8 minutes, one report.

The GPU machine this project is sometimes lent has no network, Python 3.12
with its own torch (CUDA 13), torchvision, numpy and OpenCV, and 15 minutes
of device time for everything. Run with that machine's ``python3`` (this
file needs nothing but the standard library to start), it:

1. checks the interpreter: torch >= 2.4 imports (else a one-line error),
   and whether CUDA is there (``--device auto``);
2. installs what the machine lacks from a wheel folder made here by
   ``tools/misc/prepare_gpu_wheels.py`` (``--wheels``): ``pip install
   --no-index --no-deps --target WORK_DIR/site``, then ``PYTHONPATH``. Not a
   venv: the machine's python3 is itself a venv (/opt/torch/.venv), and a
   ``--system-site-packages`` venv made from it sees the base interpreter's
   packages, not its torch; a venv also refuses ``pip install --user``.
   A wheel is skipped where the machine already has a version that every
   requirement on it admits, so its torch stack keeps its own packages;
3. verifies the result: mmengine, mmcv (pure Python: mmcv.ops is absent),
   mmpretrain, mmdtl import and every installed requirement is met;
4. runs tests/test_cuda (none needs mmcv ops), ``benchmark.py`` at batch 32
   with fp16 AMP for ViT-B (every method) and DINOv2-g (full, DTL+ with a
   checkpointed suffix and half-stored weights, the same with recomputed
   prefix taps), and ``memory_scaling.py``'s estimates of the same steps
   beside the measured peaks (``--measured``);
5. writes ``WORK_DIR/report.md`` and ``WORK_DIR/gpu_check.csv`` (one row per
   arch and method: measured and estimated peak, step time).

Every step has a time limit; the limits add up to ``--budget-s`` (480 s), and
time a step leaves unused goes to the next ones. Without CUDA (or with
``--device cpu``) the same steps run on CPU at small settings (a tiny ViT and
DINOv2-S at 32/28 px, batch 2, bf16 autocast, the tests'
``MMDTL_TEST_DEVICE=cpu`` dry run): a rehearsal of everything but the GPU,
and the report says in its first lines that no GPU was available.

The steps live in :mod:`mmdtl.analysis.gpu_check` (standard library only
at import); this script maps the command line onto them.

Usage (``bash tools/analysis/gpu_check.sh --offline ...`` runs this with
``${PYTHON:-python3}``)::

    python3 tools/analysis/gpu_check_offline.py work_dirs/gpu_check_offline \\
        --wheels work_dirs/gpu_wheels
"""
import argparse
import importlib
import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def import_check():
    """``mmdtl.analysis.gpu_check``, imported without running
    ``mmdtl/__init__.py``.

    On the GPU machine this script starts before mmengine and mmpretrain are
    installed, and ``import mmdtl`` checks them (and imports torch and every
    model). The check module needs only the standard library, so while it is
    imported ``mmdtl`` is a bare package of the repository's ``mmdtl/``
    folder; afterwards the name is released, so that a later ``import mmdtl``
    imports the real package. Where mmdtl is imported already (tests), that
    one serves.
    """
    name = 'mmdtl.analysis.gpu_check'
    if 'mmdtl' in sys.modules:
        return importlib.import_module(name)
    package = types.ModuleType('mmdtl')
    package.__path__ = [str(REPO / 'mmdtl')]
    sys.modules['mmdtl'] = package
    try:
        return importlib.import_module(name)
    finally:
        for bare in ('mmdtl', 'mmdtl.analysis'):
            sys.modules.pop(bare, None)


check = import_check()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('work_dir', nargs='?', default='work_dirs/gpu_check_offline')
    parser.add_argument('--wheels', help='the folder made by --prepare-wheels (without '
                        'it, the packages the interpreter already has are used)')
    parser.add_argument('--site', help='where the wheels go (default WORK_DIR/site)')
    parser.add_argument('--device', choices=['auto', 'cuda', 'cpu'], default='auto')
    parser.add_argument('--budget-s', type=float,
                        help='seconds for the whole check (default 480 on a GPU: 8 of the '
                             'machine\'s 15 minutes; 900 for the CPU fallback)')
    parser.add_argument('--methods', nargs='+',
                        help='methods of the main backbone (default: every method of '
                             'benchmark.py)')
    parser.add_argument('--giant-methods', nargs='+',
                        help='methods of the giant backbone (default full dtl+ckpt_half '
                             'dtl+ckpt+rp_half)')
    parser.add_argument('--skip', nargs='+', default=[], choices=check.SKIPPABLE,
                        help='steps to leave out (quick rehearsals)')
    args = parser.parse_args(argv)
    if args.budget_s is not None and args.budget_s <= 0:
        parser.error('--budget-s must be > 0')
    return args


def main(argv=None):
    sys.exit(check.run_check(parse_args(argv)))


if __name__ == '__main__':
    main()
