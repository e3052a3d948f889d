"""How the memory of a fine-tuning step scales with the backbone, estimated
without running it.

For every backbone (``--archs``, any ``--arch`` of ``benchmark.py``: ViT-S to
DINOv2-g, Swin-T to Swin-L) and method (``--methods``, those of
``benchmark.py``: full, LoRA, DTL, DTL+, DTL+ with the suffix checkpointed,
and the DTL variants with frozen weights stored in half precision,
``*_half``; ``dtl+ckpt+rp_half`` also recomputes the frozen prefix's CSN tap
inputs in backward, ``dtl+ckpt+rp+rs_half`` also the running sums that the
checkpointed suffix would keep), it builds ``benchmark.py``'s classifier and training step on
*fake tensors* (PyTorch's FakeTensorMode: shapes, dtypes and autograd as for
real, no data, no memory, no math) and counts, for one AMP step at
``--batch-size``:

- ``weights_mb``: parameters and buffers as stored;
- ``grads_mb``: gradients of the trainable parameters;
- ``optimizer_mb``: AdamW state;
- ``activations_mb``: tensors saved for backward (storage-deduplicated,
  parameters excluded);
- ``peak_mb``: the step's peak of live tensors, the quantity
  ``torch.cuda.max_memory_allocated`` reports: what lives across steps plus
  the peak of what the step allocates and frees, traced op by op.

The step is ``benchmark.py``'s: bf16 autocast (as many bytes per element as
the GPU recipe's fp16 AMP; half-stored weights in bf16), cross-entropy,
backward, AdamW with multi-tensor updates (a GPU's default). Not counted:
the caching allocator's rounding of every block to 512 bytes (which
``max_memory_allocated`` counts; negligible next to activations) and its
fragmentation (which it does not count), and the workspaces of CUDA
libraries (cuBLAS, cuDNN), which ``max_memory_allocated`` does count: their
size depends on the library and the GPU (``--measured`` shows the sum of
what differs).

**Validation.** Before the estimates, the same step runs for real on CPU for
``--validate`` archs (ViT-S and ViT-B) and methods (all of them) at
``--validate-batch-size``, and its tensor peak is measured from the CPU
profiler's allocation records (:func:`mmdtl.utils.memory.cpu_step_peaks`, an
independent count: the allocator's trace, read between ops). The relative
error of every estimate is printed; above ``--tolerance`` (1 %) the tool
fails. Printed beside it: the allocator's own peak, which adds the scratch
memory that CPU kernels take and give back inside an op (an fp32 + bf16 add
copies its bf16 operand to fp32 first; oneDNN convolutions and GEMMs reorder
operands). That scratch is no tensor of the step, depends on the CPU and has
no counterpart on a GPU, so the estimate leaves it out; the allocator's peak
exceeds the estimate by it (``kernel_scratch_mb``, up to ~1 % at ViT-S/B
sizes, more on tiny models). Checkpoints that recompute nothing random keep
no RNG state (a 5 KB host tensor each, which the estimate does not see).

**What memory costs in time.** ``--time METHOD ...`` runs real CPU steps
(bf16 autocast, as estimated) of those methods on ``--time-arch`` at
``--time-batch-size``, interleaved: ``--time-rounds`` rounds of one step of
each method, in rotating order, after two warm-up steps each, so that a
busy machine slows all methods alike. It prints the fastest and the median
step of each (the fastest is the least disturbed by other processes), the
CPU, PyTorch's version and the share of the CPU that other processes used
meanwhile.

``--measured ARCH=CSV`` adds the peaks that ``benchmark.py`` measured (its
``benchmark.csv``; on a GPU ``max_memory_allocated``) next to the estimates:
``tools/analysis/gpu_check.sh`` uses it.

Writes ``memory_scaling.md`` (validation, table, goals), ``memory_scaling.csv``
and ``memory_scaling.png`` (peak vs backbone parameters, one line per method,
horizontal lines at 8, 16, 24 and 80 GB) under ``--work-dir``.
MB = 2**20 bytes, GB = 2**30 bytes. The estimator and its validation live in
:mod:`mmdtl.analysis.memory_scaling`; this script maps the command line onto
them.

Example::

    python tools/analysis/memory_scaling.py
    python tools/analysis/memory_scaling.py --archs vit-b vit-dinov2-g --methods full dtl+
"""
import argparse
import sys
from pathlib import Path

from mmdtl.analysis.benchmark import arch_names
from mmdtl.analysis.memory_scaling import (
    ARCHS,
    METHODS,
    VALIDATE_METHODS,
    add_measured,
    estimable_methods,
    estimate,
    read_measured,
    time_steps,
    validate,
    worst_error,
    write_outputs,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--archs', nargs='+', default=ARCHS,
                        help='any --arch of benchmark.py (vit-<arch>, swin-<arch>)')
    parser.add_argument('--methods', nargs='+', default=METHODS)
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--img-size', type=int, default=224)
    parser.add_argument('--num-classes', type=int, default=100)
    parser.add_argument('--validate', nargs='*', default=['vit-s', 'vit-b'],
                        help='archs whose estimate is checked against a real CPU step '
                             '(none: skip)')
    parser.add_argument('--validate-methods', nargs='+', default=VALIDATE_METHODS)
    parser.add_argument('--validate-batch-size', type=int, default=4)
    parser.add_argument('--tolerance', type=float, default=0.01,
                        help='largest relative error of the validation against the '
                             'tensor peak (default 1 %%)')
    parser.add_argument('--csn-start', type=int,
                        help='override the side network\'s M (csn.start) of every arch')
    parser.add_argument('--csn-taps-from', type=int,
                        help='tap only the blocks from this index on (every arch)')
    parser.add_argument('--breakdown', type=int, default=0, metavar='N',
                        help='print the N largest kinds of tensor alive at each peak')
    parser.add_argument('--measured', nargs='*', default=[], metavar='ARCH=CSV',
                        help="benchmark.py's benchmark.csv of an arch, to compare its "
                             "measured peaks with the estimates")
    parser.add_argument('--time', nargs='+', metavar='METHOD',
                        help='also time real CPU steps of these methods (bf16 autocast, '
                             'interleaved rounds): what their memory costs in time')
    parser.add_argument('--time-arch', default='vit-b', help='the arch of --time')
    parser.add_argument('--time-batch-size', type=int, default=4)
    parser.add_argument('--time-rounds', type=int, default=10)
    parser.add_argument('--work-dir', default='work_dirs/memory_scaling')
    args = parser.parse_args(argv)
    known = arch_names()
    for arch in args.archs + args.validate + ([args.time_arch] if args.time else []):
        if arch not in known:
            parser.error(f'unknown arch {arch!r}; choose from {known}')
    allowed = estimable_methods()
    validated = args.validate_methods if args.validate else []
    for method in args.methods + validated + (args.time or []):
        if method not in allowed:
            parser.error(f'method {method!r} cannot be estimated; choose from {allowed}')
    if min(args.batch_size, args.validate_batch_size, args.time_batch_size,
           args.time_rounds) < 1:
        parser.error('--batch-size, --validate-batch-size, --time-batch-size and '
                     '--time-rounds must be >= 1')
    return args


def main(argv=None):
    args = parse_args(argv)
    checks = []
    if args.validate:
        print(f'Validating the estimator against real CPU steps '
              f'(batch {args.validate_batch_size}):', flush=True)
        checks = validate(args)
    rows = estimate(args)
    if args.measured:
        try:
            add_measured(rows, read_measured(args.measured))
        except ValueError as e:
            sys.exit(str(e))
    timed = None
    if args.time:
        print(f'Timing real CPU steps of {args.time_arch}: {", ".join(args.time)}', flush=True)
        timed = time_steps(args)
    paths = write_outputs(args, checks, rows, timed)
    print(Path(paths['md']).read_text())
    print('wrote', ', '.join(paths.values()))
    worst = worst_error(checks)
    if worst is not None and abs(worst['error']) > args.tolerance:
        sys.exit(f'the estimator is off by {100 * worst["error"]:+.2f} % on a real step '
                 f'({worst["arch"]} {worst["method"]}), more than --tolerance '
                 f'{100 * args.tolerance:g} %')


if __name__ == '__main__':
    main()
