"""The estimator's validation: estimate and real CPU step agree within 1 %
on the checkpointed methods, and the CPU kernels' scratch memory, which the
estimate leaves out, is measured apart."""
import csv

import pytest
import torch

from mmdtl.utils.memory import cpu_step_peaks, tracked_step_peak_bytes


def test_cpu_peaks_tell_kernel_scratch_from_tensors():
    # A CPU kernel adding an fp32 and a bf16 tensor first copies the bf16
    # operand to fp32 (TensorIterator's common dtype) and frees the copy
    # before it returns: scratch that the allocator sees, no tensor of the
    # step, and no allocation at all on a GPU (it casts while it loads).
    big = torch.ones(250_000)                        # fp32, 1 MB
    small = torch.ones(250_000, dtype=torch.bfloat16)  # 0.5 MB

    def step():
        return big + small  # a 1 MB fp32 result, after a 1 MB fp32 scratch copy

    peaks = cpu_step_peaks(step, [big, small])
    assert peaks.tensors == 1_500_000 + 1_000_000 == tracked_step_peak_bytes(step, [big, small])
    assert peaks.allocator == peaks.tensors + 1_000_000
    assert peaks.scratch == 1_000_000


@pytest.mark.parametrize('methods', [['full', 'dtl+ckpt', 'dtl+ckpt_half', 'dtl+ckpt+rp_half',
                                      'dtl+ckpt+rp+rs_half', 'dtl+ckpt+rp+rs+sl_half']])
def test_validation_is_within_one_percent_on_checkpointed_methods(tmp_path, load_cli, capsys,
                                                                  methods):
    tool = load_cli('tools/analysis/memory_scaling.py')
    assert tool.parse_args([]).tolerance == 0.01
    # The tool exits (SystemExit) when an error exceeds its 1 % tolerance.
    tool.main(['--archs', 'vit-tiny-test', '--methods', 'dtl+', '--batch-size', '2',
               '--img-size', '32', '--validate', 'vit-tiny-test',
               '--validate-methods', *methods, '--validate-batch-size', '2',
               '--work-dir', str(tmp_path)])
    rows = list(csv.DictReader(open(tmp_path / 'memory_scaling_validation.csv')))
    assert [r['method'] for r in rows] == methods
    for row in rows:
        estimated, tensors, allocator, scratch = (
            float(row[k]) for k in ('estimated_mb', 'measured_mb', 'allocator_peak_mb',
                                    'kernel_scratch_mb'))
        assert abs(float(row['error'])) <= 0.01, row
        assert abs(estimated / tensors - 1 - float(row['error'])) < 1e-9
        # What the allocator saw beyond the tensors is the kernels' scratch
        # at its own peak: on this 32 px model, much of the step.
        assert allocator == pytest.approx(tensors + scratch)
        assert scratch >= 0
    assert 'kernel scratch' in capsys.readouterr().out


def test_time_interleaves_real_steps(tmp_path, load_cli, capsys):
    tool = load_cli('tools/analysis/memory_scaling.py')
    tool.main(['--archs', 'vit-tiny-test', '--methods', 'dtl+', '--batch-size', '2',
               '--img-size', '32', '--validate', '--time', 'dtl+ckpt_half',
               'dtl+ckpt+rp+rs_half', '--time-arch', 'vit-tiny-test', '--time-batch-size', '2',
               '--time-rounds', '2', '--work-dir', str(tmp_path)])
    table = (tmp_path / 'memory_scaling.md').read_text()
    assert 'Step time on CPU: vit-tiny-test, batch 2, 32 px, bf16 autocast, 2 interleaved' in table
    assert 'torch ' + torch.__version__ in table and 'of the CPU meanwhile' in table
    rows = [line for line in table.splitlines() if line.startswith('| dtl+ckpt')]
    assert [r.split(' | ')[0] for r in rows] == ['| dtl+ckpt_half', '| dtl+ckpt+rp+rs_half']
    assert rows[0].endswith('| 1.000 |')
    with pytest.raises(SystemExit):
        tool.parse_args(['--time', 'dtl+cache'])  # a warm cache cannot be timed here
    assert 'cannot be estimated' in capsys.readouterr().err
