"""Evaluate a checkpoint on a config's test set (mmpretrain, mmdet or mmseg scope).

Examples::

    python tools/test.py configs/dtl/vit-demo_digits.py work_dirs/vit-demo_digits/epoch_15.pth
    python tools/test.py configs/mmseg/upernet_dtl+-swin-b-p4-w7_8xb2-160k_ade20k-512x512.py \
        work_dirs/upernet_dtl+-swin-b-p4-w7_8xb2-160k_ade20k-512x512/iter_160000.pth
    python tools/test.py CONFIG CKPT --out results.pkl --show-dir vis
    bash tools/dist_test.sh CONFIG CKPT 8 [ARGS]          # torchrun
"""
import argparse
import inspect
import os
import os.path as osp

import torch.distributed as torch_dist
from mmengine.dist import is_main_process
from mmengine.evaluator import DumpResults
from mmengine.registry import HOOKS, RUNNERS
from mmengine.runner import Runner

import mmdtl  # noqa: F401  (registers DTL models, datasets, hooks)
from mmdtl.engine.hooks import TrunkCheckHook
from mmdtl.utils import register_safe_globals

# isort: split
# Config/launch helpers shared with the training tool (tools/ is sys.path[0]
# when this file runs as a script).
from train import (
    CHECKPOINT_ERRORS,
    CfgOptionsAction,
    _amp_capable,
    load_config,
    setup_cpu_distributed,
    setup_eval_fp16,
)


def parse_args():
    parser = argparse.ArgumentParser(description='Evaluate a checkpoint')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--work-dir', help='the dir to save logs (default: ./work_dirs/<config name>)')
    parser.add_argument(
        '--out', help='dump the raw predictions to this pickle file (.pkl or .pickle)')
    parser.add_argument(
        '--show-dir', help='save images with drawn predictions to this directory')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=CfgOptionsAction,
        help='override settings in the config, e.g. test_dataloader.batch_size=8')
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        parser.error(f'--out must end with .pkl or .pickle, got {args.out!r}')
    return args


def enable_visualization(cfg, show_dir: str, config_path: str) -> None:
    """Turn on the config's visualization hook, whichever codebase it is from.

    mmpretrain's ``VisualizationHook`` takes ``enable``/``out_dir``,
    mmdet's ``DetVisualizationHook`` takes ``draw``/``test_out_dir`` and
    mmseg's ``SegVisualizationHook`` takes ``draw`` only and saves through the
    visualizer (into ``show_dir/vis_data/vis_image/``); the hook's signature
    decides.
    """
    vis = cfg.get('default_hooks', {}).get('visualization')
    if vis is None:
        raise SystemExit(f'--show-dir: {config_path} has no default_hooks.visualization hook.')
    hook_type = vis['type']
    if isinstance(hook_type, str):
        with HOOKS.switch_scope_and_registry(cfg.get('default_scope')) as registry:
            hook_type = registry.get(hook_type)
    params = inspect.signature(hook_type).parameters if hook_type else {}
    if 'test_out_dir' in params:
        vis.update(draw=True, test_out_dir=show_dir)
    elif 'out_dir' in params:
        vis.update(enable=True, out_dir=show_dir)
    elif 'draw' in params:
        # every test image (the hook draws every `interval`-th batch)
        vis.update(draw=True, interval=1)
        cfg.visualizer['save_dir'] = show_dir
    else:
        raise SystemExit(f'--show-dir: cannot tell how to enable {vis["type"]} '
                         f'(from {config_path}).')


def main():
    args = parse_args()
    # Weights-only loading that can resume mmengine checkpoints (explicit,
    # as mmdet/mmseg configs may not import mmdtl).
    register_safe_globals()
    cfg = load_config(args.config, args.cfg_options)
    notes = []

    cfg.launcher = args.launcher
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])

    if '://' not in args.checkpoint and not osp.isfile(args.checkpoint):
        raise SystemExit(f'Checkpoint not found: {args.checkpoint}')
    cfg.load_from = args.checkpoint
    cfg.resume = False

    if args.show_dir is not None:
        enable_visualization(cfg, args.show_dir, args.config)

    # the released recipes evaluate under fp16 autocast: fp32 without a GPU
    setup_eval_fp16(cfg, notes)

    if args.launcher != 'none' and not _amp_capable():
        setup_cpu_distributed(cfg, args.launcher, notes)

    if 'runner_type' not in cfg:
        runner = Runner.from_cfg(cfg)
    else:
        runner = RUNNERS.build(cfg)
    for note in notes:
        runner.logger.warning(note)

    if not any(isinstance(hook, TrunkCheckHook) for hook in runner.hooks):
        runner.register_hook(TrunkCheckHook())  # configs not based on ours (mmdet, mmseg)
    if args.out is not None:
        runner.test_evaluator.metrics.append(DumpResults(out_file_path=args.out))

    try:
        metrics = runner.test()
    except CHECKPOINT_ERRORS as e:
        raise SystemExit(f'{type(e).__name__}: {e}') from None

    if is_main_process():
        print(f'Test metrics of {args.checkpoint}:')
        for name, value in (metrics or {}).items():
            print(f'  {name}: {value}')
    if torch_dist.is_available() and torch_dist.is_initialized():
        # Every rank done first: a gloo rank torn down while another still
        # talks to it aborts at exit ("terminate called without an active
        # exception", seen once in CI with 2 CPU processes).
        torch_dist.barrier()
        torch_dist.destroy_process_group()
    return metrics


if __name__ == '__main__':
    main()
