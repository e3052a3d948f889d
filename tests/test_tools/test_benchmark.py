"""tools/analysis/benchmark.py runs end to end and writes its table and plot;
mmdtl.analysis.benchmark, which it calls, from Python."""
import csv
import subprocess
import sys

import pytest

from mmdtl.analysis import benchmark as bench


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
    # How busy other processes kept the machine while each step was timed.
    assert all(0. <= float(r['others_cpu']) <= 1. for r in rows.values())
    # Every figure names the machine and the torch that measured it.
    import torch
    machine = bench.machine_info('cpu')
    # the CPU model and logical CPUs; torch's thread count may differ from the
    # test process's (pytest runs may set it)
    named = {tuple(r['device_name'].split(', ')[:2]) for r in rows.values()}
    assert named == {tuple(machine['device_name'].split(', ')[:2])}
    assert all(' torch threads' in r['device_name'] for r in rows.values())
    assert {r['torch_version'] for r in rows.values()} == {torch.__version__}
    md = (tmp_path / 'benchmark.md').read_text()
    assert f'Measured on {", ".join(next(iter(named)))}, ' in md
    assert ' torch threads, ' in md and f', torch {torch.__version__}.' in md


def test_others_load_counts_another_process():
    """A second process spinning on a CPU shows up in ``others_cpu``; this
    process's own work does not."""
    import os
    import time
    if not os.path.isfile('/proc/stat'):
        pytest.skip('no /proc/stat')
    load = bench.OthersLoad()
    tic = time.perf_counter()
    while time.perf_counter() - tic < 0.5:  # our own busy loop
        pass
    own = load.fraction()
    spinner = subprocess.Popen([sys.executable, '-c', 'while True: pass'])
    try:
        time.sleep(0.2)
        load = bench.OthersLoad()
        time.sleep(1.0)
        other = load.fraction()
    finally:
        spinner.kill()
        spinner.wait()
    # One spinning process holds about one CPU of os.cpu_count().
    assert other > own and other >= 0.5 / os.cpu_count()


def test_least_disturbed_times_again_on_a_busy_machine():
    import argparse
    import os
    import time
    if not os.path.isfile('/proc/stat'):
        pytest.skip('no /proc/stat')
    calls = []

    def measure():
        calls.append(1)
        time.sleep(0.3)
        return len(calls)

    def args(max_others):
        return argparse.Namespace(max_others=max_others, quiet_retries=2, quiet_wait=0.)

    assert bench.least_disturbed(measure, args(None))[0] == 1 and len(calls) == 1
    assert bench.least_disturbed(measure, args(1.))[0] == 2 and len(calls) == 2
    spinner = subprocess.Popen([sys.executable, '-c', 'while True: pass'])
    try:
        time.sleep(0.2)
        value, others = bench.least_disturbed(measure, args(0.))
    finally:
        spinner.kill()
        spinner.wait()
    # Never quiet enough: 1 + 2 tries, the least disturbed one kept.
    assert len(calls) == 5 and value in (3, 4, 5) and others > 0


def test_machine_names_the_cpu_model():
    import os
    import platform

    import torch
    name = bench.cpu_name()
    if os.path.isfile('/proc/cpuinfo'):
        models = [line.split(':', 1)[1].strip() for line in open('/proc/cpuinfo')
                  if line.startswith('model name')]
        if models:
            assert name.startswith(models[0] + ' (family ')
    else:
        assert name.startswith(platform.processor() or platform.machine() or 'CPU')
    assert f'{os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads' in name


def test_every_zoo_arch_with_its_scaled_recipe():
    names = bench.arch_names()
    for name in ('vit-s', 'vit-b', 'vit-l', 'vit-h', 'vit-eva-g', 'vit-dinov2-g',
                 'vit-deit-t', 'vit-dinov2-small', 'swin-t', 'swin-s', 'swin-b', 'swin-large'):
        assert name in names, name
    # The released recipes where they exist; the others scaled to the depth.
    assert bench.arch_entry('vit-b')[1] == dict(rank=2, taps=list(range(12)), start=6,
                                                kernel=3)
    assert bench.arch_entry('swin-b')[1] == bench.ARCHS['swin-b'][1]
    backbone, recipe = bench.arch_entry('vit-dinov2-g')
    assert backbone['patch_size'] == 14 and recipe['start'] == 20
    assert recipe['taps'] == list(range(40))
    backbone, recipe = bench.arch_entry('swin-t')  # depths 2, 2, 6, 2
    assert recipe['taps'] == list(range(4, 12)) and recipe['start'] == 7
    with pytest.raises(ValueError, match="--arch 'vit-x' is not known"):
        bench.arch_entry('vit-x')


def test_benchmark_takes_a_config(tmp_path, repo_root):
    config = tmp_path / 'tiny_dtl.py'
    config.write_text(
        "model = dict(type='ImageClassifier', backbone=dict(\n"
        "    type='DTLViT', img_size=32, patch_size=8, drop_path_rate=0.1,\n"
        "    arch=dict(embed_dims=32, num_layers=4, num_heads=2, feedforward_channels=64),\n"
        "    csn=dict(type='CompactSideNetwork', rank=3, start=1, dwconv_kernel=5),\n"
        "    init_cfg=dict(type='Pretrained', checkpoint='missing.pth')))\n")
    backbone, recipe = bench.config_entry(str(config))
    assert backbone['type'] == 'VisionTransformer' and 'init_cfg' not in backbone
    assert recipe == dict(rank=3, taps=None, start=1, kernel=5)
    out = subprocess.run(
        [sys.executable, 'tools/analysis/benchmark.py', str(config), '--methods', 'dtl+',
         'dtl+_half', '--batch-size', '2', '--img-size', '32', '--warmup', '0', '--repeats',
         '1', '--device', 'cpu', '--cpu-bf16', '--work-dir', str(tmp_path),
         '--max-others', '0.9', '--quiet-retries', '1', '--quiet-wait', '0'],
        cwd=repo_root, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    rows = {r['method']: r for r in csv.DictReader(open(tmp_path / 'benchmark.csv'))}
    # 4 taps x 2 x 3 x 32 + one 5x5 depthwise conv over 32 channels
    assert int(rows['dtl+']['trainable_backbone']) == 4 * 2 * 3 * 32 + 25 * 32
    # Half-stored frozen weights: less memory in the same bf16 step.
    assert float(rows['dtl+_half']['tensor_peak_mb']) < float(rows['dtl+']['tensor_peak_mb'])
    assert '# Fine-tuning memory and speed: tiny_dtl, 32px' in \
        (tmp_path / 'benchmark.md').read_text()


def test_benchmark_config_from_python(tmp_path):
    """The Python entry: a config's methods measured in this process, the
    rows named by the machine, and the tool's files when asked for."""
    config = tmp_path / 'tiny_dtl.py'
    config.write_text(
        "model = dict(type='ImageClassifier', backbone=dict(\n"
        "    type='DTLViT', img_size=32, patch_size=8,\n"
        "    arch=dict(embed_dims=32, num_layers=4, num_heads=2, feedforward_channels=64),\n"
        "    csn=dict(type='CompactSideNetwork', rank=3, start=1, dwconv_kernel=5)))\n")
    logged = []
    rows = bench.benchmark_config(config, methods=['full', 'dtl+'], batch_size=2, img_size=32,
                                  device='cpu', warmup=0, repeats=1, isolated=False,
                                  work_dir=tmp_path / 'out', log=logged.append)
    assert [r['method'] for r in rows] == ['full', 'dtl+']
    assert set(rows[0]) == set(bench.COLUMNS + bench.MACHINE_COLUMNS)
    assert rows[1]['trainable_backbone'] == 4 * 2 * 3 * 32 + 25 * 32
    assert rows[0]['activation_vs_full'] == 1.0 > rows[1]['activation_vs_full'] > 0
    assert rows[0]['device_name'] == bench.machine_info('cpu')['device_name']
    assert logged[0] == f'[1/2] {config} full ...'
    md = (tmp_path / 'out' / 'benchmark.md').read_text()
    assert md.startswith('# Fine-tuning memory and speed: tiny_dtl, 32px, batch 2, cpu, fp32\n')
    assert md.count('\n| ') == 3  # the header and one row per method
    csv_rows = list(csv.DictReader(open(tmp_path / 'out' / 'benchmark.csv')))
    assert [r['method'] for r in csv_rows] == ['full', 'dtl+']
    with pytest.raises(ValueError, match="unknown methods \\['dtl\\+\\+'\\]"):
        bench.benchmark_config(config, methods=['dtl++'])
    with pytest.raises(ValueError, match='--batch-size and --repeats must be >= 1'):
        bench.benchmark_config(config, batch_size=0)
    with pytest.raises(TypeError, match="unknown options \\['batch'\\]"):
        bench.benchmark_config(config, batch=2)
    with pytest.raises(FileNotFoundError, match='missing.py does not exist'):
        bench.benchmark_config(tmp_path / 'missing.py')


def test_a_grey_config_is_benchmarked_on_grey_images(tmp_path):
    """The images take the trunk's input channels (the demo's ViT reads one),
    not always three."""
    config = tmp_path / 'grey_dtl.py'
    config.write_text(
        "model = dict(type='ImageClassifier', backbone=dict(\n"
        "    type='DTLViT', img_size=28, patch_size=7, in_channels=1,\n"
        "    arch=dict(embed_dims=32, num_layers=4, num_heads=2, feedforward_channels=64),\n"
        "    csn=dict(type='CompactSideNetwork', rank=2, start=1, dwconv_kernel=3)))\n")
    rows = bench.benchmark_config(config, methods=['full', 'dtl+'], batch_size=2, img_size=28,
                                  device='cpu', warmup=0, repeats=1, isolated=False)
    assert [r['method'] for r in rows] == ['full', 'dtl+']
    assert rows[1]['activation_mb'] < rows[0]['activation_mb']


def test_building_lora_logs_nothing():
    """mmpretrain's LoRAModel calls init_weights, which logs one line per
    parameter (3564 lines in a memory_scaling run); the benchmark builds it
    quietly."""
    import logging

    from mmengine.logging import MMLogger
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        bench.build_model('vit-tiny-test', 'lora', 10, 32)
    finally:
        logger.removeHandler(handler)
    assert not [r for r in records if 'init_weights' in r.getMessage()]
