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
hash.
"""
import argparse
import os
import os.path as osp
import sys
import time

# OpenMP threads that spin while waiting make a step up to 30x slower on a
# busy CPU (measured on the shared 2-core development machine); set before
# torch is imported. An explicit OMP_WAIT_POLICY wins.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

DEFAULT_CONFIG = 'configs/pretrain/vit-demo_fashion-mnist.py'
DEFAULT_OUT = 'checkpoints/demo/vit-demo_fashion-mnist.pth'


def record_sha256(path: str) -> str:
    """Write (or update) ``path``'s line in ``SHA256SUMS`` next to it, in
    ``sha256sum -c`` format; returns the hash."""
    from mmdtl.utils.checkpoint import _write_text_atomic, file_sha256

    digest = file_sha256(path)
    sums = osp.join(osp.dirname(path), 'SHA256SUMS')
    name = osp.basename(path)
    lines = []
    if osp.isfile(sums):
        with open(sums, encoding='utf-8') as f:
            lines = [line for line in f if line.strip() and line.split()[-1] != name]
    lines.append(f'{digest}  {name}\n')
    _write_text_atomic(sums, ''.join(sorted(lines, key=lambda s: s.split()[-1])))
    return digest


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
    import torch
    from mmengine.config import Config
    from mmengine.runner import Runner

    import mmdtl  # noqa: F401  (registries, weights_only-safe resuming)
    from mmdtl.datasets.mini_vtab import prepare_fashion_mnist
    from mmdtl.utils import save_checkpoint_atomic
    from mmdtl.utils.cfg_options import parse_cfg_options

    if not osp.isfile(args.config):
        raise SystemExit(f'Config file not found: {args.config}')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(parse_cfg_options(args.cfg_options))
    cfg.work_dir = args.work_dir or osp.join(
        'work_dirs', 'pretrain', osp.splitext(osp.basename(args.config))[0])
    cfg.resume = args.resume

    # mmpretrain's FashionMNIST reads uncompressed files from its data_root.
    roots = {cfg[name].dataset.data_root for name in ('train_dataloader', 'val_dataloader')
             if cfg.get(name)}
    try:
        for root in roots:
            prepare_fashion_mnist(root, args.source)
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from e

    start = time.time()
    runner = Runner.from_cfg(cfg)
    runner.train()
    minutes = (time.time() - start) / 60

    model = runner.model.module if hasattr(runner.model, 'module') else runner.model
    state_dict = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()
                  if k.startswith(('backbone.', 'head.'))}
    metrics = {k: float(v) for k, v in (runner.message_hub.log_scalars.items())
               if k.startswith('val/accuracy')
               for v in [v.current()]}
    meta = dict(
        config=osp.relpath(osp.abspath(args.config), REPO),
        epochs=int(runner.epoch),
        iters=int(runner.iter),
        minutes=round(minutes, 1),
        fashion_mnist_test_top1=metrics.get('val/accuracy/top1'),
        torch=str(torch.__version__),
    )
    save_checkpoint_atomic(dict(meta=meta, state_dict=state_dict), args.out)
    digest = record_sha256(args.out)
    print(f'Pre-trained {meta["epochs"]} epochs in {minutes:.1f} min; Fashion-MNIST test top-1 '
          f'{meta["fashion_mnist_test_top1"]}', flush=True)
    print(f'Wrote {args.out} ({osp.getsize(args.out) / 2**20:.2f} MB), sha256 {digest}',
          flush=True)
    return args.out


if __name__ == '__main__':
    main()
