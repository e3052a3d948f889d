"""Cost of K DTL tasks on one shared frozen backbone vs K separate models.

For K = 1, 2, 5, 10 (``tasks``) tasks of the same recipe (``csn.start =
M`` of N blocks) it measures, on the same random images:

- FLOPs of one forward, counted by ``torch.utils.flop_counter.FlopCounterMode``
  (every matmul/conv/attention op actually executed, 2 FLOPs per
  multiply-add): K separate DTL classifiers vs one :class:`MultiTaskDTL`;
- the ratio and its target ``(M + K (N - M)) / (K N)``, met when the ratio is
  at most 1.1 x the target (the 10 % cover the patch embedding, side networks
  and heads); the shared prefix is blocks ``0..M``;
- median wall time of a forward (after warm-up) for both;
- the largest absolute logit difference between the two (should be ~1e-6).

:func:`write_outputs` writes ``multitask_benchmark.md`` and
``multitask_benchmark.csv`` (through :mod:`mmdtl.utils.report`). The tasks
get random side networks and heads (the cost does not depend on the values)
and are saved and loaded as real task files.

``tools/analysis/multitask_benchmark.py`` is the command line of this module.
"""
import os.path as osp
import tempfile
from typing import Callable, List, Sequence, Tuple

import torch

from mmdtl.utils.report import markdown_table, write_csv, write_markdown

ARCHS = {
    # name: (backbone cfg without csn, csn recipe, number of classes)
    'vit-b': (dict(type='DTLViT', arch='b', img_size=224, patch_size=16),
              dict(rank=2, taps=list(range(12)), start=6, dwconv_kernel=3), 100),
    'swin-b': (dict(type='DTLSwin', arch='base', img_size=224),
               dict(rank=4, taps=list(range(4, 24)), start=14, dwconv_kernel=5), 100),
    'vit-tiny': (dict(type='DTLViT', arch=dict(embed_dims=32, num_layers=6, num_heads=2,
                                               feedforward_channels=64),
                      img_size=32, patch_size=8),
                 dict(rank=2, taps=list(range(6)), start=3, dwconv_kernel=3), 10),
    'swin-tiny': (dict(type='DTLSwin', arch=dict(embed_dims=16, depths=[2, 2, 2],
                                                 num_heads=[1, 2, 2]),
                       img_size=32, window_size=2, out_indices=(2, )),
                  dict(rank=2, taps=list(range(2, 6)), start=2, dwconv_kernel=3), 10),
}
COLUMNS = ['tasks', 'separate_gflops', 'multitask_gflops', 'flops_ratio', 'target_ratio',
           'within_target', 'separate_ms', 'multitask_ms', 'speedup', 'max_abs_diff']



def make_task_files(arch: str, num_tasks: int, folder: str,
                    seed: int = 0) -> Tuple[dict, str, List[str]]:
    """A backbone checkpoint and ``num_tasks`` task files with random CSNs/heads.

    Args:
        arch (str): A key of ``ARCHS``.
        num_tasks (int): How many task files to write.
        folder (str): Where to write them.
        seed (int): Seed of the random weights. Defaults to 0.

    Returns:
        tuple: The backbone config (with its ``csn``), the backbone
        checkpoint and the task files.
    """
    from mmpretrain.registry import MODELS

    from mmdtl.engine import save_task_checkpoint

    backbone_cfg, csn_cfg, num_classes = ARCHS[arch]
    backbone_cfg = dict(backbone_cfg, csn=dict(type='CompactSideNetwork', **csn_cfg))
    is_swin = backbone_cfg['type'] == 'DTLSwin'
    if is_swin:
        backbone_cfg['drop_path_rate'] = 0.  # Swin's default 0.1; serving is eval anyway
    torch.manual_seed(seed)
    feature_dims = MODELS.build(backbone_cfg).csn.embed_dims[-1]
    model = MODELS.build(dict(
        type='ImageClassifier', backbone=backbone_cfg,
        neck=dict(type='GlobalAveragePooling') if is_swin else None,
        head=dict(type='LinearClsHead', num_classes=num_classes, in_channels=feature_dims)))
    backbone_file = osp.join(folder, 'backbone.pth')
    state = {k: v for k, v in model.backbone.state_dict().items() if not k.startswith('csn.')}
    torch.save(dict(state_dict=state), backbone_file)
    files = []
    for k in range(num_tasks):
        model.backbone.csn.reset_parameters()
        for up in model.backbone.csn.up_projs.values():
            torch.nn.init.normal_(up, std=0.02)  # B = 0 would make the CSN a no-op
        model.head.fc.reset_parameters()
        path = osp.join(folder, f'task{k}.pth')
        save_task_checkpoint(model, path, backbone_checkpoint=backbone_file,
                             meta=dict(task_name=f'task{k}'), backbone_cfg=backbone_cfg)
        files.append(path)
    return backbone_cfg, backbone_file, files


def count_flops(fn: Callable) -> int:
    """FLOPs of one call of ``fn`` (torch ``FlopCounterMode``, 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def measure(arch: str, k: int, backbone_cfg: dict, backbone_file: str, files: Sequence[str],
            batch_size: int = 4, device: str = 'cpu', warmup: int = 1, repeats: int = 3,
            seed: int = 0) -> dict:
    """One row of the table: K separate classifiers against one MultiTaskDTL.

    Args:
        arch (str): A key of ``ARCHS`` (for the image size).
        k (int): Number of tasks, the first ``k`` of ``files``.
        backbone_cfg (dict), backbone_file (str), files (Sequence[str]):
            What :func:`make_task_files` returned.
        batch_size (int): Images per forward. Defaults to 4.
        device (str): Where to run. Defaults to 'cpu'.
        warmup (int): Untimed calls before timing. Defaults to 1.
        repeats (int): Timed calls; the median is kept. Defaults to 3.
        seed (int): Seed of the images (``seed + 1``). Defaults to 0.

    Returns:
        dict: The ``COLUMNS`` of the row, plus ``num_layers`` and ``start``.
    """
    from mmdtl.models import MultiTaskDTL
    from mmdtl.utils import median_seconds

    multi = MultiTaskDTL(backbone_cfg, files[:k], backbone_checkpoint=backbone_file)
    multi = multi.to(device)
    backbone = multi.backbone
    num_layers, start = backbone.csn.num_layers, min(multi.starts.values())
    img_size = ARCHS[arch][0]['img_size']
    torch.manual_seed(seed + 1)
    images = torch.randn(batch_size, 3, img_size, img_size, device=device)
    tasks = [(multi.csns[str(i)], multi.necks[str(i)] if str(i) in multi.necks else None,
              multi.heads[str(i)]) for i in range(k)]
    own_csn = backbone.csn

    def separate():
        # K separate DTL classifiers: the same frozen backbone run once per task.
        outputs = []
        for csn, neck, head in tasks:
            backbone.csn = csn
            feats = backbone(images)
            outputs.append(head(neck(feats) if neck is not None else feats))
        backbone.csn = own_csn
        return outputs

    def shared():
        return list(multi(images).values())

    def median_ms(fn) -> float:
        return 1000 * median_seconds(fn, device, warmup, repeats)

    with torch.no_grad():
        diff = max((a - b).abs().max().item() for a, b in zip(separate(), shared()))
        separate_flops = count_flops(separate)
        shared_flops = count_flops(shared)
        separate_ms = median_ms(separate)
        shared_ms = median_ms(shared)
    ratio = shared_flops / separate_flops
    target = (start + k * (num_layers - start)) / (k * num_layers)
    return dict(tasks=k, separate_gflops=separate_flops / 1e9,
                multitask_gflops=shared_flops / 1e9, flops_ratio=ratio,
                target_ratio=target, within_target=ratio <= 1.1 * target,
                separate_ms=separate_ms, multitask_ms=shared_ms,
                speedup=separate_ms / shared_ms, max_abs_diff=diff,
                num_layers=num_layers, start=start)


def run_benchmark(arch: str, tasks: Sequence[int] = (1, 2, 5, 10), batch_size: int = 4,
                  device: str = 'cpu', warmup: int = 1, repeats: int = 3,
                  seed: int = 0) -> List[dict]:
    """Measure every K of ``tasks`` on task files written to a temporary folder.

    Progress is printed as ``[multitask_benchmark] ...`` lines.

    Args:
        arch (str): A key of ``ARCHS``.
        tasks (Sequence[int]): The numbers of tasks K. Defaults to 1 2 5 10.
        batch_size, device, warmup, repeats, seed: As in :func:`measure`.

    Returns:
        list[dict]: One row (:func:`measure`) per K.
    """
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        print(f'[multitask_benchmark] {arch}: writing {max(tasks)} task files', flush=True)
        backbone_cfg, backbone_file, files = make_task_files(arch, max(tasks), folder, seed)
        for k in tasks:
            print(f'[multitask_benchmark] K={k} tasks ...', flush=True)
            row = measure(arch, k, backbone_cfg, backbone_file, files, batch_size=batch_size,
                          device=device, warmup=warmup, repeats=repeats, seed=seed)
            print(f'[multitask_benchmark] K={k}: FLOPs ratio {row["flops_ratio"]:.3f} '
                  f'(target {row["target_ratio"]:.3f}), {row["speedup"]:.2f}x faster, '
                  f'max |diff| {row["max_abs_diff"]:.1e}', flush=True)
            rows.append(row)
    return rows


def fmt(value) -> str:
    """A table cell: yes/NO for booleans, 3 decimals (or 1e-4 style) for floats."""
    if isinstance(value, bool):
        return 'yes' if value else 'NO'
    if isinstance(value, float):
        if value and abs(value) < 1e-3:
            return f'{value:.1e}'
        return f'{value:.3f}' if abs(value) < 100 else f'{value:.1f}'
    return str(value)


def write_outputs(work_dir: str, rows: Sequence[dict], arch: str, batch_size: int,
                  device: str) -> str:
    """Write ``multitask_benchmark.md`` and ``.csv`` under ``work_dir``.

    Args:
        work_dir (str): The folder (created).
        rows (Sequence[dict]): From :func:`run_benchmark`.
        arch (str), batch_size (int), device (str): Named in the title.

    Returns:
        str: The markdown text.
    """
    first = rows[0]
    title = (f'{arch}: N={first["num_layers"]} blocks, shared prefix = blocks 0..'
             f'M={first["start"]}, batch {batch_size}, {device}')
    text = '\n'.join([
        f'# Multi-task DTL on one frozen backbone ({title})', '',
        'FLOPs: torch FlopCounterMode (2 per multiply-add); target ratio = '
        '(M + K (N - M)) / (K N), within target = ratio <= 1.1 x target.', '',
        markdown_table(COLUMNS, rows, fmt)])
    write_markdown(osp.join(work_dir, 'multitask_benchmark.md'), text)
    write_csv(osp.join(work_dir, 'multitask_benchmark.csv'), COLUMNS, rows)
    return text.rstrip('\n')
