"""The memory estimator: exact counts on hand-made steps, for real and on
fake tensors, and tools/analysis/memory_scaling.py end to end."""
import csv
import re

import torch

from mmdtl.analysis.benchmark import build_model
from mmdtl.utils.memory import (
    StorageMemoryTracker,
    cpu_step_peak_bytes,
    fake_tensors,
    tracked_step_peak_bytes,
    training_state,
)


def handmade_step():
    first = torch.ones(250_000)   # 1 MB
    second = torch.ones(500_000)  # 2 MB: the peak, with the first
    del first, second
    return torch.ones(100_000)    # 0.4 MB after both were freed


def test_tracked_peak_is_exact_for_real_and_fake_tensors():
    live = torch.zeros(1000)  # 4,000 B alive through the step
    expected = 4_000 + 3_000_000
    assert tracked_step_peak_bytes(handmade_step, [live, live[:10]]) == expected
    assert cpu_step_peak_bytes(handmade_step, [live]) == expected
    with fake_tensors():
        fake = torch.zeros(1000)
        assert type(fake).__name__ == 'FakeTensor'
        assert tracked_step_peak_bytes(handmade_step, [fake]) == expected


def test_peak_breakdown_names_what_is_alive_at_the_peak():
    tracker = StorageMemoryTracker(describe_peak=True)
    assert tracked_step_peak_bytes(handmade_step, [], tracker) == 3_000_000
    assert [(b, n, dtype, shape) for b, n, _, dtype, shape in tracker.peak_breakdown] == [
        (2_000_000, 1, 'float32', (500_000, )), (1_000_000, 1, 'float32', (250_000, ))]


def test_views_and_in_place_results_allocate_nothing():
    weight = torch.zeros(1000, 250)  # 1 MB, made before the step

    def step():
        weight.t().add_(1.)        # a view, written in place
        return weight[:10].clone()  # 10 rows: 10,000 B

    assert tracked_step_peak_bytes(step, [weight]) == 1_000_000 + 10_000


def test_step_peak_counts_the_gradients_the_step_frees():
    model = torch.nn.Linear(500, 500, bias=False)  # 1 MB of weight
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(1, 500)

    def step():
        optimizer.zero_grad(set_to_none=True)  # frees the last gradient
        model(x).sum().backward()              # and makes a new one
        optimizer.step()

    step()
    state = training_state(model, optimizer)
    assert len(state) == 2  # the weight and its gradient; SGD keeps no state
    for measure in (cpu_step_peak_bytes, tracked_step_peak_bytes):
        assert measure(step, state + [x]) >= 2 * 1_000_000


def test_memory_scaling_tool(tmp_path, load_cli, capsys):
    tool = load_cli('tools/analysis/memory_scaling.py')
    # Peaks as benchmark.py writes them (e.g. max_memory_allocated on a GPU).
    measured = tmp_path / 'benchmark.csv'
    measured.write_text('method,peak_mb\nfull,2.0\ndtl+,0.5\n')
    tool.main(['--archs', 'vit-tiny-test', '--methods', 'full', 'dtl+', 'dtl+_half',
               'dtl+ckpt_half', 'dtl+ckpt+rp_half', '--batch-size', '4', '--img-size', '32',
               '--validate', 'vit-tiny-test', '--validate-methods', 'full', 'dtl+ckpt_half',
               '--validate-batch-size', '2', '--work-dir', str(tmp_path),
               '--measured', f'vit-tiny-test={measured}'])
    stdout = capsys.readouterr().out
    assert 'validate vit-tiny-test full batch 2: estimated' in stdout
    rows = {r['method']: {k: float(v) if v else None for k, v in r.items()
                          if k not in ('arch', 'method')}
            for r in csv.DictReader(open(tmp_path / 'memory_scaling.csv'))}
    full, dtl, half, ckpt = (rows[m] for m in ('full', 'dtl+', 'dtl+_half', 'dtl+ckpt_half'))
    mb = 2**20
    model = build_model('vit-tiny-test', 'full', 100, 32)
    params = list(model.parameters())
    # Full fine-tuning in fp32: every parameter has a gradient and two AdamW
    # moments, plus a 4-byte step count per tensor.
    assert full['weights_mb'] * mb == sum(4 * p.numel() for p in params)
    assert full['grads_mb'] * mb == 4 * full['trainable'] == sum(4 * p.numel() for p in params)
    assert full['optimizer_mb'] * mb == 8 * full['trainable'] + 4 * len(params)
    # DTL: only the side network and head train; half storage halves the
    # frozen linears; checkpointing the suffix keeps fewer activations.
    assert dtl['grads_mb'] * mb == 4 * dtl['trainable'] < full['grads_mb'] * mb
    assert half['weights_mb'] < 0.6 * dtl['weights_mb']
    assert ckpt['activations_mb'] < half['activations_mb'] <= dtl['activations_mb']
    # Recomputing the prefix's taps (0..M=2) in backward keeps the fp32
    # images instead of each tap's bf16 input copy [4, 17, 32], projection
    # [68, 2] and A copy [2, 32]: more bytes on this tiny model, fewer at 224 px.
    recomputed = rows['dtl+ckpt+rp_half']
    delta = 4 * 3 * 32 * 32 * 4 - 3 * 2 * (4 * 17 * 32 + 68 * 2 + 2 * 32)
    assert abs((recomputed['activations_mb'] - ckpt['activations_mb']) * mb - delta) < 1
    assert half['peak_mb'] < dtl['peak_mb'] < full['peak_mb']
    assert full['measured_peak_mb'] == 2.0 and half['measured_peak_mb'] is None
    assert full['measured_vs_estimate'] == 2.0 / full['peak_mb'] - 1
    assert dtl['measured_vs_estimate'] == 0.5 / dtl['peak_mb'] - 1
    table = (tmp_path / 'memory_scaling.md').read_text()
    assert 'Estimator vs real CPU tensor peak (batch 2;' in table
    # The estimate meets the real step's tensor peak (within the default 1 %
    # tolerance, or main() would have exited); the allocator's peak adds the
    # CPU kernels' scratch (under 1 MB), a large fraction on this tiny model.
    for line in stdout.splitlines():
        if line.strip().startswith('validate '):
            estimated, measured, allocator, scratch = (
                float(v) for v in re.findall(r'([\d.]+) MB', line))
            assert abs(estimated / measured - 1) <= 0.01, line
            assert 0 <= allocator - measured < 1.0 and abs(allocator - measured - scratch) < 0.02
    assert (tmp_path / 'memory_scaling.png').stat().st_size > 5000

