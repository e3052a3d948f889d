"""Pre-train the demo backbone on Fashion-MNIST and save its checkpoint.

Trains ``configs/pretrain/vit-demo_fashion-mnist.py`` (a small mmpretrain
``VisionTransformer``) with mmengine's Runner, as ``tools/train.py`` does, on
the 60,000 Fashion-MNIST training images, then writes the trained classifier's
weights as a plain mmpretrain checkpoint (``state_dict`` with ``backbone.*``
and ``head.*`` keys, fp32; loads with ``weights_only=True``) and records its
SHA-256 in ``SHA256SUMS`` next to it. The shipped
``checkpoints/demo/vit-demo_fashion-mnist.pth`` was made with::

    python tools/misc/pretrain_demo_backbone.py

The data are Debian's ``dataset-fashion-mnist`` package
(``/usr/share/datasets/fashion-mnist``), uncompressed into the config's
``data_root`` (``data/fashion-mnist``); nothing is downloaded. CPU training is
not bit-reproducible, so a re-run gives an equivalent checkpoint with another
hash. The logic: ``mmdtl.demo.pretrain``.
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

from mmdtl.demo.pretrain import DEFAULT_CONFIG, DEFAULT_OUT, pretrain_demo_backbone  # noqa: E402
from mmdtl.utils.cfg_options import parse_cfg_options  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Pre-train the demo ViT on Fashion-MNIST and save its checkpoint.')
    parser.add_argument('config', nargs='?', default=DEFAULT_CONFIG, help='pre-training config')
    parser.add_argument('--out', default=DEFAULT_OUT, help='checkpoint to write')
    parser.add_argument('--work-dir', help='logs and epoch checkpoints (default: '
                        'work_dirs/pretrain/<config name>)')
    parser.add_argument('--fashion-mnist', dest='source',
                        help='folder with the Fashion-MNIST IDX files (.gz or plain); default: '
                        '/usr/share/datasets/fashion-mnist (Debian dataset-fashion-mnist)')
    parser.add_argument('--resume', action='store_true',
                        help='resume from the latest checkpoint in the work dir')
    parser.add_argument('--cfg-options', nargs='+', default=[],
                        help='KEY=VALUE overrides of the config (e.g. train_cfg.max_epochs=1)')
    args = parser.parse_args(argv)
    for kv in args.cfg_options:
        if '=' not in kv or not kv.split('=', 1)[0]:
            parser.error(f'--cfg-options: expected KEY=VALUE, got {kv!r}')
    return args


def main(argv=None) -> str:
    args = parse_args(argv)
    return pretrain_demo_backbone(args.config, args.out, args.work_dir, args.source,
                                  args.resume, parse_cfg_options(args.cfg_options))


if __name__ == '__main__':
    main()
