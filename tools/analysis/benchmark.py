"""Side-by-side memory and speed benchmark of fine-tuning methods.

For every method (full fine-tuning, linear probe, LoRA on qkv, DTL, DTL+,
DTL+ with checkpointed suffix, DTL+ with a warm frozen-prefix cache, and the
last two with the frozen linear weights prepacked for oneDNN on CPU) on the
same inputs it measures:

- trainable parameters, backbone only and with the head;
- activation bytes: tensors saved for backward in one training step,
  storage-deduplicated, parameters excluded (device-independent);
- peak memory of a training step: ``torch.cuda.max_memory_allocated`` on a GPU
  (AMP on by default there), the process's peak resident memory on CPU (every
  method runs in its own process so the peaks do not mix);
- peak tensor memory of a training step (``tensor_peak_mb``): on a GPU the
  same ``max_memory_allocated``; on CPU the live tensors before the step
  (parameters, optimizer state, inputs, cached features, packed weights)
  plus the peak of the allocations and frees the profiler traces during it.
  With ``--cpu-bf16`` the CPU runs under bf16 autocast, which stores the
  same bytes per element as the GPU recipe's fp16 AMP: an estimate of the
  GPU figure without a GPU (CUDA workspaces and allocator rounding aside);
- training step time (forward + backward + AdamW step) and inference
  throughput: medians of repeated runs after warm-up; ``others_cpu``, the
  share of the machine's CPU time other processes used while the step was
  timed (Linux; a busy machine slows the step, see
  :class:`mmdtl.analysis.benchmark.OthersLoad`; ``--max-others`` times again
  until the machine was quiet enough);
- with ``--epoch-batches N``, the time of two passes over N new batches, as
  epochs 1 and 2 of training: the prefix cache fills during the first.

The backbone is ``--arch`` (``vit-<arch>`` or ``swin-<arch>`` for every arch
of mmpretrain's ``VisionTransformer``/``SwinTransformer`` zoo, with the DTL
recipe scaled to its depth, see :func:`mmdtl.analysis.benchmark.arch_entry`)
or the ``model.backbone`` and side network of a config file. The ``*_half`` methods store the frozen
weights in the AMP dtype (``frozen_weights_dtype``: fp16 on a GPU, bf16 with
``--cpu-bf16``). ``dtl+ckpt+rp_half`` also recomputes the frozen prefix's CSN
tap inputs in backward instead of keeping them (``recompute_prefix_taps``,
which needs a prefix without drop path).

It writes ``benchmark.md``, ``benchmark.csv`` and ``benchmark.png`` (memory vs
trainable parameters, one marker per method, as in the paper's Figure 1)
under ``--work-dir``; the table and every CSV row name the machine (CPU model
and threads, or GPU) and the PyTorch version that measured them, since step
times (packing's gain above all) depend on both. ``tools/analysis/memory_scaling.py`` estimates the
memory of the same steps for backbones too large to run. The models, steps
and measurements live in :mod:`mmdtl.analysis.benchmark` (from Python:
``benchmark_config``); this script maps the command line onto them.

Example::

    python tools/analysis/benchmark.py --arch vit-b --batch-size 4
    python tools/analysis/benchmark.py --arch vit-b --batch-size 32 --device cuda
    python tools/analysis/benchmark.py configs/dtl/vit-b_vtab-cifar.py --methods full dtl+
"""
import argparse
import json
import os
from pathlib import Path

from mmdtl.analysis.benchmark import (
    ALL_METHODS,
    METHODS,
    add_profile_args,
    arch_names,
    benchmark_methods,
    check_profile_args,
    measure,
    write_outputs,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', nargs='?',
                        help='a config file: benchmark its model.backbone and side network '
                             '(instead of --arch)')
    parser.add_argument('--arch', default='vit-b',
                        help='<kind>-<arch> of mmpretrain\'s zoos, kind vit, swin, deit3, eva02, '
                             'beit or convnext (e.g. vit-l, vit-dinov2-g, swin-t, '
                             'convnext-tiny) or vit-tiny-test')
    parser.add_argument('--methods', nargs='+', default=METHODS, choices=ALL_METHODS)
    add_profile_args(parser)
    parser.add_argument('--work-dir', default='work_dirs/benchmark')
    parser.add_argument('--single', help=argparse.SUPPRESS)  # one method's row as JSON
    args = parser.parse_args(argv)
    if args.config is None and args.arch not in arch_names():
        parser.error(f'--arch {args.arch!r} is not known; choose from {arch_names()}')
    if args.config is not None and not os.path.isfile(args.config):
        parser.error(f'config file {args.config} does not exist')
    check_profile_args(parser, args)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.single:
        print(json.dumps(measure(args, args.single)))
        return
    rows = benchmark_methods(args, args.methods, log=lambda line: print(line, flush=True))
    paths = write_outputs(args, rows)
    print(Path(paths['md']).read_text())
    print('wrote', ', '.join(paths.values()))


if __name__ == '__main__':
    main()
