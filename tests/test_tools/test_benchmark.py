"""tools/analysis/benchmark.py runs end to end and writes its table and plot."""
import csv
import subprocess
import sys


def test_benchmark_tool_tiny(tmp_path, repo_root):
    out = subprocess.run(
        [sys.executable, 'tools/analysis/benchmark.py', '--arch', 'vit-tiny-test',
         '--batch-size', '2', '--img-size', '32', '--warmup', '0', '--repeats', '1',
         '--device', 'cpu', '--epoch-batches', '2', '--work-dir', str(tmp_path)],
        cwd=repo_root, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert '[9/9]' in out.stdout
    rows = {r['method']: r for r in csv.DictReader(open(tmp_path / 'benchmark.csv'))}
    assert list(rows) == ['full', 'linear', 'lora', 'dtl', 'dtl+', 'dtl+ckpt', 'dtl+cache',
                          'dtl+packed', 'dtl+cache+packed']
    act = {m: float(r['activation_mb']) for m, r in rows.items()}
    assert act['dtl+'] < act['lora'] < act['full']
    assert act['dtl+ckpt'] < act['dtl+']
    # Packing changes kernels, not what autograd keeps.
    assert act['dtl+packed'] == act['dtl+'] and act['dtl+cache+packed'] == act['dtl+cache']
    assert float(rows['full']['activation_vs_full']) == 1.0
    peak = {m: float(r['tensor_peak_mb']) for m, r in rows.items()}
    # Frozen trunk: no gradients or AdamW state for it, fewer activations.
    assert peak['dtl+'] < peak['lora'] < peak['full']
    assert peak['dtl+packed'] > peak['dtl+']  # the packed copies count
    assert all(float(r['epoch1_s']) > 0 and float(r['epoch2_s']) > 0 for r in rows.values())
    # 4 taps x 2 x 2 x 32 + 3x3 depthwise conv over 32 channels
    assert int(rows['dtl+']['trainable_backbone']) == 4 * 2 * 2 * 32 + 9 * 32
    assert int(rows['linear']['trainable_backbone']) == 0
    assert (tmp_path / 'benchmark.md').read_text().count('|') > 20
    assert (tmp_path / 'benchmark.png').stat().st_size > 5000
