"""tools/analysis/compare_official.py: its options are benchmark.py's, and its mmdtl half
runs end to end on a tiny arch (the released half needs a checkout of heekhero/DTL)."""
import csv

import pytest


def test_mmdtl_half_on_a_tiny_arch(tmp_path, load_cli):
    tool = load_cli('tools/analysis/compare_official.py')
    # It used to build its own Namespace for benchmark.profile and crash on the
    # options it lacked (cpu_bf16, epoch_batches): every profile option is shared.
    args = tool.parse_args(['--mmdtl-only', '--cpu-bf16', '--epoch-batches', '3'])
    assert (args.cpu_bf16, args.epoch_batches, args.batch_size, args.repeats) == (True, 3, 4, 3)
    with pytest.raises(SystemExit):
        tool.parse_args(['--mmdtl-only', '--batch-size', '0'])  # benchmark's own check
    with pytest.raises(SystemExit):
        tool.parse_args([])  # the released half needs --official-repo

    work_dir = tool.main(['--mmdtl-only', '--arch', 'vit-tiny-test', '--img-size', '32',
                          '--batch-size', '2', '--num-classes', '3', '--warmup', '0',
                          '--repeats', '1', '--device', 'cpu', '--epoch-batches', '1',
                          '--work-dir', str(tmp_path)])
    assert work_dir == tmp_path
    rows = {r['method']: r for r in csv.DictReader(open(tmp_path / 'compare_official.csv'))}
    assert list(rows) == ['mmdtl: full fine-tuning', 'mmdtl: DTL+',
                          'mmdtl: DTL+ suffix checkpointed']
    act = {m: float(r['activation_mb']) for m, r in rows.items()}
    assert act['mmdtl: DTL+ suffix checkpointed'] < act['mmdtl: DTL+'] < \
        act['mmdtl: full fine-tuning']
    # vit-tiny-test: 4 taps x (2x32 + 32x2) + a 3x3 depthwise conv over 32 channels
    assert int(rows['mmdtl: DTL+']['trainable_backbone']) == 4 * 2 * 2 * 32 + 9 * 32
    assert all(float(r['epoch1_s']) > 0 and float(r['step_ms']) > 0 for r in rows.values())
    md = (tmp_path / 'compare_official.md').read_text()
    assert md.startswith('# mmdtl: vit-tiny-test, 32px, batch 2, cpu') and md.count('|') > 20
