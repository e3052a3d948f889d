"""Cost of K DTL tasks on one shared frozen backbone vs K separate models.

For K = 1, 2, 5, 10 (``--tasks``) tasks of the same recipe (``csn.start =
M`` of N blocks) it measures, on the same random images:

- FLOPs of one forward, counted by ``torch.utils.flop_counter.FlopCounterMode``
  (every matmul/conv/attention op actually executed, 2 FLOPs per
  multiply-add): K separate DTL classifiers vs one :class:`MultiTaskDTL`;
- the ratio and its target ``(M + K (N - M)) / (K N)``, met when the ratio is
  at most 1.1 x the target (the 10 % cover the patch embedding, side networks
  and heads); the shared prefix is blocks ``0..M``;
- median wall time of a forward (after warm-up) for both;
- the largest absolute logit difference between the two (should be ~1e-6).

Writes ``multitask_benchmark.md`` and ``multitask_benchmark.csv`` under
``--work-dir``. The tasks get random side networks and heads (the cost does
not depend on the values) and are saved and loaded as real task files.

Example::

    python tools/analysis/multitask_benchmark.py --batch-size 4
    python tools/analysis/multitask_benchmark.py --arch swin-b --batch-size 4
    python tools/analysis/multitask_benchmark.py --device cuda --batch-size 32
    python tools/analysis/multitask_benchmark.py --tiny --work-dir /tmp/mtb
"""
import argparse
import csv
import os
import os.path as osp
import sys
import tempfile

import torch

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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--arch', default='vit-b', choices=sorted(ARCHS))
    parser.add_argument('--tiny', action='store_true', help='shortcut for --arch vit-tiny')
    parser.add_argument('--tasks', type=int, nargs='+', default=[1, 2, 5, 10])
    parser.add_argument('--batch-size', type=int, default=4)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--work-dir', default='work_dirs/multitask_benchmark')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--num-threads', type=int, default=None,
                        help='CPU threads of torch (default: torch\'s choice)')
    args = parser.parse_args(argv)
    if args.tiny:
        args.arch = 'vit-tiny'
    if min(args.tasks) < 1:
        parser.error('--tasks must be >= 1')
    return args


def make_task_files(args, folder: str):
    """A backbone checkpoint and max(K) task files with random CSNs/heads."""
    from mmpretrain.registry import MODELS

    from mmdtl.engine import save_task_checkpoint

    backbone_cfg, csn_cfg, num_classes = ARCHS[args.arch]
    backbone_cfg = dict(backbone_cfg, csn=dict(type='CompactSideNetwork', **csn_cfg))
    is_swin = backbone_cfg['type'] == 'DTLSwin'
    if is_swin:
        backbone_cfg['drop_path_rate'] = 0.  # Swin's default 0.1; serving is eval anyway
    torch.manual_seed(args.seed)
    feature_dims = MODELS.build(backbone_cfg).csn.embed_dims[-1]
    model = MODELS.build(dict(
        type='ImageClassifier', backbone=backbone_cfg,
        neck=dict(type='GlobalAveragePooling') if is_swin else None,
        head=dict(type='LinearClsHead', num_classes=num_classes, in_channels=feature_dims)))
    backbone_file = osp.join(folder, 'backbone.pth')
    state = {k: v for k, v in model.backbone.state_dict().items() if not k.startswith('csn.')}
    torch.save(dict(state_dict=state), backbone_file)
    files = []
    for k in range(max(args.tasks)):
        model.backbone.csn.reset_parameters()
        for up in model.backbone.csn.up_projs.values():
            torch.nn.init.normal_(up, std=0.02)  # B = 0 would make the CSN a no-op
        model.head.fc.reset_parameters()
        path = osp.join(folder, f'task{k}.pth')
        save_task_checkpoint(model, path, backbone_checkpoint=backbone_file,
                             meta=dict(task_name=f'task{k}'), backbone_cfg=backbone_cfg)
        files.append(path)
    return backbone_cfg, backbone_file, files


def count_flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def median_ms(args, fn) -> float:
    from mmdtl.utils import median_seconds
    return 1000 * median_seconds(fn, args.device, args.warmup, args.repeats)


def measure(args, k: int, backbone_cfg: dict, backbone_file: str, files: list) -> dict:
    from mmdtl.models import MultiTaskDTL

    multi = MultiTaskDTL(backbone_cfg, files[:k], backbone_checkpoint=backbone_file)
    multi = multi.to(args.device)
    backbone = multi.backbone
    num_layers, start = backbone.csn.num_layers, min(multi.starts.values())
    img_size = ARCHS[args.arch][0]['img_size']
    torch.manual_seed(args.seed + 1)
    images = torch.randn(args.batch_size, 3, img_size, img_size, device=args.device)
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

    with torch.no_grad():
        diff = max((a - b).abs().max().item() for a, b in zip(separate(), shared()))
        separate_flops = count_flops(separate)
        shared_flops = count_flops(shared)
        separate_ms = median_ms(args, separate)
        shared_ms = median_ms(args, shared)
    ratio = shared_flops / separate_flops
    target = (start + k * (num_layers - start)) / (k * num_layers)
    return dict(tasks=k, separate_gflops=separate_flops / 1e9,
                multitask_gflops=shared_flops / 1e9, flops_ratio=ratio,
                target_ratio=target, within_target=ratio <= 1.1 * target,
                separate_ms=separate_ms, multitask_ms=shared_ms,
                speedup=separate_ms / shared_ms, max_abs_diff=diff,
                num_layers=num_layers, start=start)


def fmt(value) -> str:
    if isinstance(value, bool):
        return 'yes' if value else 'NO'
    if isinstance(value, float):
        if value and abs(value) < 1e-3:
            return f'{value:.1e}'
        return f'{value:.3f}' if abs(value) < 100 else f'{value:.1f}'
    return str(value)


def write_outputs(args, rows: list) -> str:
    os.makedirs(args.work_dir, exist_ok=True)
    first = rows[0]
    title = (f'{args.arch}: N={first["num_layers"]} blocks, shared prefix = blocks 0..'
             f'M={first["start"]}, batch {args.batch_size}, {args.device}')
    lines = [f'# Multi-task DTL on one frozen backbone ({title})', '',
             'FLOPs: torch FlopCounterMode (2 per multiply-add); target ratio = '
             '(M + K (N - M)) / (K N), within target = ratio <= 1.1 x target.', '',
             '| ' + ' | '.join(COLUMNS) + ' |', '|' + '---|' * len(COLUMNS)]
    lines += ['| ' + ' | '.join(fmt(r[c]) for c in COLUMNS) + ' |' for r in rows]
    md_path = osp.join(args.work_dir, 'multitask_benchmark.md')
    with open(md_path, 'w', encoding='utf-8') as f:
        f.write('\n'.join(lines) + '\n')
    with open(osp.join(args.work_dir, 'multitask_benchmark.csv'), 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({c: r[c] for c in COLUMNS} for r in rows)
    return '\n'.join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    import mmdtl  # noqa: F401  (registers DTLViT, DTLSwin, MultiTaskDTL)

    if args.num_threads:
        torch.set_num_threads(args.num_threads)

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        print(f'[multitask_benchmark] {args.arch}: writing {max(args.tasks)} task files',
              flush=True)
        backbone_cfg, backbone_file, files = make_task_files(args, folder)
        for k in args.tasks:
            print(f'[multitask_benchmark] K={k} tasks ...', flush=True)
            row = measure(args, k, backbone_cfg, backbone_file, files)
            print(f'[multitask_benchmark] K={k}: FLOPs ratio {row["flops_ratio"]:.3f} '
                  f'(target {row["target_ratio"]:.3f}), {row["speedup"]:.2f}x faster, '
                  f'max |diff| {row["max_abs_diff"]:.1e}', flush=True)
            rows.append(row)
    print(write_outputs(args, rows))
    print(f'[multitask_benchmark] wrote {args.work_dir}/multitask_benchmark.{{md,csv}}')
    return 0 if all(r['within_target'] for r in rows) else 1


if __name__ == '__main__':
    sys.exit(main())
