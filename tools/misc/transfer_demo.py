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
``--force`` reruns everything. The same from Python:
``mmdtl.demo.transfer.run_demo`` (docs/python_api.md).

Examples::

    python tools/misc/transfer_demo.py                     # one seed (make demo)
    python tools/misc/transfer_demo.py --seeds 0 1 2       # the README's table
    python tools/misc/transfer_demo.py --methods dtl+ full --tasks digits
    python tools/misc/transfer_demo.py --val               # train800 -> val200
"""
import argparse
import os
import os.path as osp
import sys

# OpenMP threads that spin while waiting make a step up to 30x slower on a
# busy CPU (measured on the shared 2-core development machine); set before
# torch is imported. An explicit OMP_WAIT_POLICY wins.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from mmdtl.datasets.mini_vtab import MINI_VTAB_TASKS  # noqa: E402
from mmdtl.demo.transfer import CHECKPOINT, METHODS, run_demo  # noqa: E402
from mmdtl.utils.cfg_options import parse_cfg_options  # noqa: E402


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


def main(argv=None) -> int:
    args = parse_args(argv)
    run_demo(args.methods, args.tasks, args.seeds, args.work_dir, args.data_root,
             args.fashion_source, args.checkpoint, args.val, args.force,
             parse_cfg_options(args.cfg_options))
    return 0


if __name__ == '__main__':
    sys.exit(main())
