"""The offline GPU check: the wheel folder's checks (size, completeness,
layout) without network, the offline install from a folder of real wheels,
the interpreter checks, and the CPU fallback end to end at toy settings."""
import base64
import csv
import hashlib
import json
import os
import subprocess
import sys
import zipfile

import pytest

from mmdtl.analysis import gpu_check, gpu_wheels
from mmdtl.requirements import REQUIRED, satisfies


@pytest.fixture
def cli(load_cli):
    """tools/misc/prepare_gpu_wheels.py's command line."""
    return load_cli('tools/misc/prepare_gpu_wheels.py')


@pytest.fixture
def offline():
    return gpu_check


def make_wheel(folder, name, version, requires=(), module_text='VALUE = 1\n'):
    """A real (pure-Python) wheel that pip installs: a module, METADATA,
    WHEEL and RECORD."""
    dist = f'{name.replace("-", "_")}-{version}'
    files = {f'{name.replace("-", "_")}.py': module_text,
             f'{dist}.dist-info/METADATA': 'Metadata-Version: 2.1\n'
             f'Name: {name}\nVersion: {version}\n'
             + ''.join(f'Requires-Dist: {r}\n' for r in requires),
             f'{dist}.dist-info/WHEEL': 'Wheel-Version: 1.0\nGenerator: test\n'
             'Root-Is-Purelib: true\nTag: py3-none-any\n'}
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b'=')
        record.append(f'{path},sha256={digest.decode()},{len(text.encode())}')
    files[f'{dist}.dist-info/RECORD'] = '\n'.join(record + [f'{dist}.dist-info/RECORD,,']) + '\n'
    path = folder / f'{dist}-py3-none-any.whl'
    with zipfile.ZipFile(path, 'w') as wheel:
        for name_in_zip, text in files.items():
            wheel.writestr(name_in_zip, text)
    return path


def test_pins_are_exact_and_leave_the_machine_stack_alone():
    names = [gpu_wheels.canonical(n) for n, _ in gpu_wheels.PINS]
    assert len(names) == len(set(names))
    assert all(v and v[0].isdigit() for _, v in gpu_wheels.PINS)
    # torch, torchvision, numpy and OpenCV are the machine's: never carried.
    assert not set(names) & set(gpu_wheels.MACHINE_PROVIDES)
    assert {'torch', 'torchvision', 'numpy', 'opencv-python'} <= set(gpu_wheels.MACHINE_PROVIDES)
    assert {'mmengine', 'mmpretrain', 'setuptools'} <= set(names)
    assert gpu_wheels.MMCV == ('mmcv', '2.1.0')
    # The pins are what mmdtl requires at import.
    pins = dict((gpu_wheels.canonical(n), v) for n, v in gpu_wheels.PINS)
    for name in ('mmengine', 'mmpretrain', 'setuptools'):
        assert satisfies(pins[name], REQUIRED[name]), name
    assert satisfies(gpu_wheels.MMCV[1], REQUIRED['mmcv'])


def test_size_guard(cli, tmp_path):
    small, big = tmp_path / 'a.whl', tmp_path / 'b.whl'
    small.write_bytes(b'x' * 1000)
    big.write_bytes(b'x' * 3000)
    assert gpu_wheels.size_problem([small, big], 4000) is None
    message = gpu_wheels.size_problem([small, big], 3999)
    assert 'over the' in message and 'b.whl' in message.split('largest:')[1]
    # The default limit is the 60 MiB.
    assert cli.parse_args(['d']).max_mib == 60
    with pytest.raises(SystemExit):
        cli.parse_args(['d', '--python-version', '312'])


def test_completeness_check_evaluates_markers_for_the_target_python(tmp_path):
    wheels = [gpu_wheels.wheel_metadata(make_wheel(tmp_path, *args)) for args in [
        ('mmthing', '1.0', ['helper>=2', 'torch>=2.4', 'opencv-python>=3',
                            'backport; python_version < "3.12"', 'winonly; sys_platform == "win32"',
                            'docs; extra == "docs"']),
        ('helper', '2.5', ['tiny==1.0']),
        ('tiny', '1.1', []),
    ]]
    assert wheels[0]['name'] == 'mmthing' and 'helper>=2' in wheels[0]['requires']
    problems = gpu_wheels.missing_requirements(wheels, '3.12')
    # torch and OpenCV are the machine's; the backport only matters on 3.11.
    assert len(problems) == 1 and "'tiny==1.0'" in problems[0] and 'tiny 1.1' in problems[0]
    problems = gpu_wheels.missing_requirements(wheels, '3.11')
    assert any('backport' in p and 'no wheel' in p for p in problems)
    (tmp_path / 'not_a_wheel.whl').write_bytes(b'junk')
    with pytest.raises(zipfile.BadZipFile):
        gpu_wheels.wheel_metadata(tmp_path / 'not_a_wheel.whl')


def test_prepare_refuses_a_folder_it_did_not_write(cli, tmp_path):
    (tmp_path / 'notes.txt').write_text('mine')
    with pytest.raises(SystemExit, match='files this tool did not write'):
        cli.main([str(tmp_path)])
    # A folder it made before loses its wheels and manifest, nothing else.
    again = tmp_path / 'again'
    again.mkdir()
    make_wheel(again, 'old', '1.0')
    (again / 'manifest.json').write_text('{}')
    gpu_wheels.prepare_folder(again)
    assert list(again.iterdir()) == []


def test_prepared_manifest_is_what_the_offline_check_reads(offline, tmp_path):
    """prepare_wheels from local wheels (instead of PyPI): the checks, then
    a manifest that gpu_check accepts; a failed check leaves none."""
    python_version = '{}.{}'.format(*sys.version_info[:2])
    source = tmp_path / 'source'
    source.mkdir()
    make_wheel(source, 'gpucheck-probe', '1.0', ['gpucheck-dep>=1', 'torch>=2.4'])
    make_wheel(source, 'gpucheck-dep', '1.2')

    def fetch(dest, version):
        assert version == python_version
        for wheel in source.glob('*.whl'):
            (dest / wheel.name).write_bytes(wheel.read_bytes())

    dest = tmp_path / 'wheels'
    manifest = gpu_wheels.prepare_wheels(dest, python_version, fetch=fetch)
    assert json.loads((dest / 'manifest.json').read_text()) == manifest
    assert [w['name'] for w in manifest['wheels']] == ['gpucheck-dep', 'gpucheck-probe']
    assert manifest['total_bytes'] == sum(f.stat().st_size for f in source.glob('*.whl'))
    assert 'mmcv==2.1.0 (MMCV_WITH_OPS=0)' in manifest['pins']
    assert offline.check_wheels(dest) == manifest
    # Too big a folder or an unmet requirement: an error, and no manifest.
    with pytest.raises(gpu_wheels.PrepareWheelsError,
                       match=r'over the 0\.0004\d+ MiB limit.*largest: gpucheck_'):
        gpu_wheels.prepare_wheels(dest, python_version, max_mib=0.0005, fetch=fetch)
    assert not (dest / 'manifest.json').exists()
    (source / 'gpucheck_dep-1.2-py3-none-any.whl').unlink()
    with pytest.raises(gpu_wheels.PrepareWheelsError, match=r'incomplete folder:\n  '
                       r"gpucheck-probe 1.0 requires 'gpucheck-dep>=1': no wheel"):
        gpu_wheels.prepare_wheels(dest, python_version, fetch=fetch)
    assert not (dest / 'manifest.json').exists()


def manifest_of(folder, python_version):
    wheels = [gpu_wheels.wheel_entry(f) for f in sorted(folder.glob('*.whl'))]
    (folder / 'manifest.json').write_text(json.dumps(dict(
        python_version=python_version, wheels=wheels,
        total_bytes=sum(w['bytes'] for w in wheels))))
    return wheels


def test_plan_keeps_what_the_machine_has_at_an_admitted_version(offline, tmp_path):
    make_wheel(tmp_path, 'mmthing', '1.0', ['helper>=2', 'pillowish'])
    make_wheel(tmp_path, 'helper', '2.5')
    make_wheel(tmp_path, 'pillowish', '9.0')
    make_wheel(tmp_path, 'setuptools', '81.0.0')
    manifest = dict(wheels=manifest_of(tmp_path, '3.12'))
    machine = {'helper': '1.0', 'pillowish': '11.0', 'mmthing': '0.9', 'setuptools': '80.1'}
    todo, kept = offline.plan_install(manifest, have=lambda n: machine.get(n))
    # helper 1.0 fails >=2; a root (mmthing) needs its pinned version;
    # setuptools only needs to be < 82 (pkg_resources).
    assert sorted(w['name'] for w in todo) == ['helper', 'mmthing']
    assert kept == {'pillowish': '11.0', 'setuptools': '80.1'}
    machine['setuptools'] = '84.2.1'
    todo, _ = offline.plan_install(manifest, have=lambda n: machine.get(n))
    assert 'setuptools' in [w['name'] for w in todo]


def test_offline_install_from_the_folder_alone(offline, tmp_path):
    wheels = tmp_path / 'wheels'
    wheels.mkdir()
    make_wheel(wheels, 'gpucheck-probe', '1.0', ['gpucheck-dep>=1'],
               module_text='from gpucheck_dep import VALUE\n')
    make_wheel(wheels, 'gpucheck-dep', '1.2', module_text='VALUE = 42\n')
    manifest_of(wheels, '{}.{}'.format(*sys.version_info[:2]))
    site = tmp_path / 'site'
    lines = []
    done = offline.install(sys.executable, wheels, site, lines.append)
    assert sorted(done['installed']) == ['gpucheck-dep 1.2', 'gpucheck-probe 1.0']
    assert any('--no-index' in line for line in lines)
    out = subprocess.run([sys.executable, '-c', 'import gpucheck_probe as p; print(p.VALUE)'],
                         env=dict(os.environ, PYTHONPATH=str(site)), capture_output=True,
                         text=True)
    assert out.stdout.strip() == '42', out.stderr
    # The same manifest again: the site is reused, nothing reinstalled.
    lines.clear()
    assert offline.install(sys.executable, wheels, site, lines.append) == done
    assert lines and 'reusing' in lines[0]
    # A damaged wheel or another Python's folder stops with one line.
    with open(next(wheels.glob('gpucheck_dep*.whl')), 'ab') as f:
        f.write(b'x')
    with pytest.raises(SystemExit, match='differs from manifest.json'):
        offline.read_manifest(wheels)
    manifest_of(wheels, '3.99')
    with pytest.raises(SystemExit, match='wheels for Python 3.99.*--python-version'):
        offline.check_wheels(wheels)
    with pytest.raises(SystemExit, match='no manifest.json'):
        offline.read_manifest(tmp_path)


def fake_python(tmp_path, torch_version):
    """An interpreter stand-in that answers the probe as a machine with
    ``torch_version`` would."""
    info = dict(python='3.12.3', executable='/opt/x/bin/python3', cuda=False,
                torch=torch_version)
    path = tmp_path / 'python3'
    path.write_text(f"#!/bin/sh\necho '{json.dumps(info)}'\n")
    path.chmod(0o755)
    return str(path)


def test_torch_older_than_2_4_is_one_line(offline, tmp_path):
    with pytest.raises(SystemExit, match=r'^gpu_check --offline: torch 2\.3\.1 in '
                                         r'/opt/x/bin/python3 is older than 2\.4'):
        offline.probe_interpreter(fake_python(tmp_path, '2.3.1'))
    info = offline.probe_interpreter(fake_python(tmp_path, '2.11.0+cu130'))
    assert info['torch'] == '2.11.0+cu130' and info['cuda'] is False


def test_a_python_without_torch_is_one_line(repo_root, tmp_path):
    venv = tmp_path / 'bare'
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True)
    out = subprocess.run(['bash', 'tools/analysis/gpu_check.sh', '--offline',
                          str(tmp_path / 'work')],
                         cwd=repo_root, capture_output=True, text=True,
                         env=dict(os.environ, PYTHON=str(venv / 'bin' / 'python')))
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith('gpu_check --offline: torch does not import in ')
    assert "run with the machine's own python3" in lines[0]
    assert not (tmp_path / 'work').exists()


def test_prepare_wheels_needs_a_folder(repo_root):
    out = subprocess.run(['bash', 'tools/analysis/gpu_check.sh', '--prepare-wheels'],
                         cwd=repo_root, capture_output=True, text=True)
    assert out.returncode == 2 and 'usage' in out.stderr


def test_cpu_fallback_end_to_end(repo_root, tmp_path):
    """The whole check on CPU with this interpreter's packages: a toy ViT,
    one method, the estimate beside the measurement, the report and CSV."""
    out = subprocess.run(
        [sys.executable, 'tools/analysis/gpu_check_offline.py', str(tmp_path / 'work'),
         '--device', 'cpu', '--methods', 'dtl+ckpt_half', '--skip', 'tests', 'giant',
         '--budget-s', '600'],
        cwd=repo_root, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    report = (tmp_path / 'work' / 'report.md').read_text()
    assert report.splitlines()[2].startswith('**No GPU was available**')
    assert '| benchmark main | ok |' in report and '| estimates main | ok |' in report
    assert '| cuda tests | skipped: by --skip |' in report
    assert 'mmcv ops:' in report and '| mmdtl | 0.1.0 (repo) |' in report
    rows = list(csv.DictReader(open(tmp_path / 'work' / 'gpu_check.csv')))
    assert [(r['arch'], r['method'], r['device']) for r in rows] == [
        ('vit-tiny-test', 'dtl+ckpt_half', 'cpu')]
    measured, estimated = float(rows[0]['measured_peak_mb']), float(rows[0]['estimated_peak_mb'])
    assert measured > 0 and estimated > 0
    assert float(rows[0]['measured_vs_estimate']) == pytest.approx(
        measured / estimated - 1, abs=0.005)


def test_a_step_out_of_time_ends_its_whole_process_group(offline, tmp_path):
    import time
    steps = offline.Steps({'slow': 10, 'after': 2}, time.monotonic() + 8, tmp_path / 'log',
                          dict(os.environ))
    pid_file = tmp_path / 'child.pid'
    # The limit is what is left less the later step's budget: 6 s, not 10.
    assert 5 < steps.limit('slow') <= 6
    tic = time.monotonic()
    assert not steps.run('slow', ['sh', '-c', f'sleep 60 & echo $! > {pid_file}; wait'],
                         output=tmp_path / 'slow.log')
    assert time.monotonic() - tic < 20
    assert steps.results[-1]['result'].startswith('TIMED OUT after')
    time.sleep(0.5)
    stat = f'/proc/{pid_file.read_text().strip()}/stat'
    # The grandchild is gone too (or a zombie its new parent has yet to reap).
    assert not os.path.exists(stat) or open(stat).read().rsplit(')', 1)[1].split()[0] == 'Z'
    steps.skip('after', 'by --skip', fine=True)
    assert not steps.ok  # the timeout counts, the asked-for skip does not
    # Parts of a step share its budget by weight.
    more = offline.Steps({'a': 10, 'b': 30}, time.monotonic() + 100, tmp_path / 'log', {})
    more.split('b', [('b 1/2', 2), ('b 2/2', 1)])
    assert more.order == ['a', 'b 1/2', 'b 2/2'] and more.budgets['b 1/2'] == 20


def test_benchmark_parts_merge_in_method_order(offline, tmp_path):
    columns = ['method', 'activation_mb', 'activation_vs_full', 'step_ms', 'step_vs_full']
    for part, rows in (('part1', [['full', 100, 1, 50, 1], ['lora', 60, 1, 40, 1]]),
                       ('part3', [['dtl+', 20, 1, 25, 1]])):  # part2 ran out of time
        (tmp_path / part).mkdir()
        with open(tmp_path / part / 'benchmark.csv', 'w', newline='') as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            writer.writerows(rows)
    offline.merge_benchmark_parts(tmp_path, ['full', 'lora', 'dtl', 'dtl+'])
    merged = list(csv.DictReader(open(tmp_path / 'benchmark.csv')))
    assert [r['method'] for r in merged] == ['full', 'lora', 'dtl+']
    assert float(merged[2]['activation_vs_full']) == 0.2
    assert float(merged[2]['step_vs_full']) == 0.5


def test_the_script_starts_without_torch_or_mmengine(repo_root, tmp_path):
    """On the GPU machine the script starts before mmengine is installed:
    it imports mmdtl.analysis.gpu_check without running mmdtl/__init__.py
    (which checks and imports mmengine) and without torch."""
    blocked = tmp_path / 'blocked'
    for name in ('torch', 'mmengine', 'mmpretrain'):
        (blocked / name).mkdir(parents=True)
        (blocked / name / '__init__.py').write_text(f'raise ImportError("{name} blocked")\n')
    out = subprocess.run([sys.executable, 'tools/analysis/gpu_check_offline.py', '--help'],
                         cwd=repo_root, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=str(blocked)))
    assert out.returncode == 0, out.stderr[-2000:]
    assert '--wheels' in out.stdout and '--skip' in out.stdout
