"""The dense demo: detection and segmentation, method against method, on CPU.

Every config ``configs/dense-demo/{retinanet,fcn}_vit-demo_<method>_scenes.py``
(frozen trunk, full fine-tuning, DTL, DTL+, sparse DTL+) starts from the
shipped pre-trained demo ViT (``checkpoints/demo/``), trains on the ``train``
scenes of ``tools/misc/make_dense_scenes.py`` and is tested once on ``test``:
bbox mAP / mAP50 with mmdet's ``CocoMetric``, mIoU / aAcc with mmseg's
``IoUMetric``. Each run is a real mmengine ``Runner``; after its test, one more
training step is measured with the meters of ``tools/misc/transfer_demo.py``
(bytes saved for backward, the step's tensor peak).

``--sweep`` chooses each config's lr instead: every lr of the method's grid
trains on ``train`` and is scored on ``val`` (seed 0; ``test`` is never looked
at); ``--write`` puts the best lr (ties: the smaller) into the config, with the
grid's scores next to it.

Writes ``<work-dir>/dense_demo.md``, ``.csv`` and ``.png`` (metric vs
activation memory, marker area ~ trainable parameters). A run whose
``result.json`` matches its config, seed and backbone is reused. The same from
Python: ``mmdtl.demo.dense.run_dense_demo`` and ``sweep_dense_lrs``.

Examples::

    python tools/misc/dense_demo.py                      # one seed (make demo-dense)
    python tools/misc/dense_demo.py --seeds 0 1 2        # the docs' table
    python tools/misc/dense_demo.py --sweep --write      # choose the lrs on val
    python tools/misc/dense_demo.py --tasks segmentation --methods dtl+ frozen
"""
import argparse
import os
import os.path as osp
import sys

# Set before torch is imported (see tools/misc/transfer_demo.py).
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from mmdtl.demo.dense import METHODS, TASKS, run_dense_demo, sweep_dense_lrs  # noqa: E402
from mmdtl.demo.runs import CHECKPOINT  # noqa: E402
from mmdtl.utils.cfg_options import parse_cfg_options  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Detection and segmentation from the shipped pre-trained ViT with every '
        'method; table + plot (or --sweep: choose the lrs on val).')
    parser.add_argument('--seeds', nargs='+', type=int, default=[0])
    parser.add_argument('--methods', nargs='+', default=list(METHODS), choices=list(METHODS))
    parser.add_argument('--tasks', nargs='+', default=list(TASKS), choices=list(TASKS))
    parser.add_argument('--work-dir', default='work_dirs/dense_demo')
    parser.add_argument('--data-root', default='data/dense-scenes',
                        help='the scenes (written there by make_dense_scenes when missing)')
    parser.add_argument('--checkpoint', default=CHECKPOINT,
                        help='pre-trained backbone (default: the shipped one)')
    parser.add_argument('--sweep', action='store_true',
                        help='choose the lrs: every lr of each grid, train -> val, seed 0')
    parser.add_argument('--write', action='store_true',
                        help='with --sweep: write the best lr into each config')
    parser.add_argument('--force', action='store_true', help='rerun finished runs')
    parser.add_argument('--cfg-options', nargs='+', default=[],
                        help='KEY=VALUE overrides given to every run')
    args = parser.parse_args(argv)
    if args.write and not args.sweep:
        parser.error('--write needs --sweep')
    for kv in args.cfg_options:
        if '=' not in kv or not kv.split('=', 1)[0]:
            parser.error(f'--cfg-options: expected KEY=VALUE, got {kv!r}')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    options = parse_cfg_options(args.cfg_options)
    if args.sweep:
        sweep_dense_lrs(args.methods, args.tasks, args.work_dir, args.data_root,
                        args.checkpoint, args.write, args.force, options)
    else:
        run_dense_demo(args.methods, args.tasks, args.seeds, args.work_dir, args.data_root,
                       args.checkpoint, args.force, options)
    return 0


if __name__ == '__main__':
    sys.exit(main())
