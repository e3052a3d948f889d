"""Pre-train the demo backbone on Fashion-MNIST and save its checkpoint.

:func:`pretrain_demo_backbone` trains ``configs/pretrain/vit-demo_fashion-mnist.py``
(a small mmpretrain ``VisionTransformer``) with mmengine's Runner, as
``tools/train.py`` does, on the 60,000 Fashion-MNIST training images, then
writes the trained classifier's weights as a plain mmpretrain checkpoint
(``state_dict`` with ``backbone.*`` and ``head.*`` keys, fp32; loads with
``weights_only=True``) and records its SHA-256 in ``SHA256SUMS`` next to it.
"""
import os.path as osp
import time
from typing import Optional

from mmdtl.utils.checkpoint import file_sha256, write_text_atomic

from .runs import REPO

DEFAULT_CONFIG = 'configs/pretrain/vit-demo_fashion-mnist.py'
DEFAULT_OUT = 'checkpoints/demo/vit-demo_fashion-mnist.pth'


def record_sha256(path: str) -> str:
    """Write (or update) ``path``'s line in ``SHA256SUMS`` next to it, in
    ``sha256sum -c`` format; returns the hash."""
    digest = file_sha256(path)
    sums = osp.join(osp.dirname(path), 'SHA256SUMS')
    name = osp.basename(path)
    lines = []
    if osp.isfile(sums):
        with open(sums, encoding='utf-8') as f:
            lines = [line for line in f if line.strip() and line.split()[-1] != name]
    lines.append(f'{digest}  {name}\n')
    write_text_atomic(sums, ''.join(sorted(lines, key=lambda s: s.split()[-1])))
    return digest


def pretrain_demo_backbone(config: str = DEFAULT_CONFIG, out: str = DEFAULT_OUT,
                           work_dir: Optional[str] = None, source: Optional[str] = None,
                           resume: bool = False, cfg_options: Optional[dict] = None) -> str:
    """Pre-train the demo ViT and save its checkpoint; returns ``out``.

    Args:
        config (str): The pre-training config.
        out (str): The checkpoint to write (``SHA256SUMS`` goes next to it).
        work_dir (str, optional): Logs and epoch checkpoints (default:
            ``work_dirs/pretrain/<config name>``).
        source (str, optional): A folder with the Fashion-MNIST IDX files
            (default: Debian's ``/usr/share/datasets/fashion-mnist``).
        resume (bool): Resume from the latest checkpoint in the work dir.
        cfg_options (dict, optional): Config overrides.
    """
    import torch
    from mmengine.config import Config
    from mmengine.runner import Runner

    import mmdtl  # noqa: F401  (registries, weights_only-safe resuming)
    from mmdtl.datasets.mini_vtab import prepare_fashion_mnist
    from mmdtl.utils import save_checkpoint_atomic

    if not osp.isfile(config):
        raise SystemExit(f'Config file not found: {config}')
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.work_dir = work_dir or osp.join(
        'work_dirs', 'pretrain', osp.splitext(osp.basename(config))[0])
    cfg.resume = resume

    # mmpretrain's FashionMNIST reads uncompressed files from its data_root.
    roots = {cfg[name].dataset.data_root for name in ('train_dataloader', 'val_dataloader')
             if cfg.get(name)}
    try:
        for root in roots:
            prepare_fashion_mnist(root, source)
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
        config=osp.relpath(osp.abspath(config), REPO),
        epochs=int(runner.epoch),
        iters=int(runner.iter),
        minutes=round(minutes, 1),
        fashion_mnist_test_top1=metrics.get('val/accuracy/top1'),
        torch=str(torch.__version__),
    )
    save_checkpoint_atomic(dict(meta=meta, state_dict=state_dict), out)
    digest = record_sha256(out)
    print(f'Pre-trained {meta["epochs"]} epochs in {minutes:.1f} min; Fashion-MNIST test top-1 '
          f'{meta["fashion_mnist_test_top1"]}', flush=True)
    print(f'Wrote {out} ({osp.getsize(out) / 2**20:.2f} MB), sha256 {digest}', flush=True)
    return out
