"""The GPU check on the offline GPU machine: its steps, budgets, install
from a wheel folder, and report. ``tools/analysis/gpu_check_offline.py`` is
the command line and documents what the check does.

This module imports only the standard library at module level: on the GPU
machine it runs before mmengine and mmpretrain are installed (step 2 installs
them, for the child processes only). That is also why its report, CSV and
merged benchmark table are written here with the standard library rather than
through :mod:`mmdtl.utils.report`, which needs torch and mmengine: the report
must be written even when the install fails. The ``verify`` step's child runs
this file by its path (``python .../gpu_check.py --verify-env ...``) with the
installed packages on ``PYTHONPATH``.
"""
import argparse
import csv
import datetime
import hashlib
import importlib
import importlib.metadata
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MIN_TORCH = (2, 4)
# What each device runs: (arch, img size, methods; None = every method of
# benchmark.py) for the main and the giant backbone, batch, timing repeats.
PROFILES = {
    'cuda': dict(main=('vit-b', 224, None),
                 giant=('vit-dinov2-g', 224, ['full', 'dtl+ckpt_half', 'dtl+ckpt+rp_half',
                                              'dtl+ckpt+rp+rs+sl_half']),
                 batch_size=32, warmup=1, repeats=3, bench_args=[],
                 precision='fp16 AMP', peak_column='peak_mb',
                 peak_kind='torch.cuda.max_memory_allocated'),
    # DINOv2-S stands in for the giant (same trunk code, patch 14, 22M params).
    'cpu': dict(main=('vit-tiny-test', 32, None),
                giant=('vit-dinov2-s', 28, ['full', 'dtl+ckpt_half', 'dtl+ckpt+rp_half',
                                            'dtl+ckpt+rp+rs+sl_half']),
                batch_size=2, warmup=1, repeats=1, bench_args=['--cpu-bf16'],
                precision='bf16 autocast (the bytes of fp16 AMP)', peak_column='tensor_peak_mb',
                peak_kind='CPU tensor peak (profiler)'),
}
# Step budgets in seconds of the default 480 (sum 465; the rest is the
# interpreter probe and the report), scaled to --budget-s. Time a step leaves
# unused passes to the later ones; a step never eats into their budgets.
BUDGETS = {'install': 30, 'verify': 25, 'cuda tests': 60, 'benchmark main': 190,
           'benchmark giant': 110, 'estimates main': 25, 'estimates giant': 25}
DEFAULT_BUDGET_S = {'cuda': 480., 'cpu': 900.}
# Methods per benchmark.py call: a call that runs out of time loses only its
# own rows (benchmark.py writes its table at the end). One per call for the
# giant, whose rows are the point (the last, every memory option, is the
# first to go when time runs out).
CHUNK = {'main': 5, 'giant': 1}
SKIPPABLE = ('tests', 'giant', 'estimates')
# Roots of the wheel folder (no other wheel requires them): the exact pinned
# version unless listed here. setuptools: any release that still has
# pkg_resources, which mmengine 0.10.7 imports.
ROOT_SPECIFIERS = {'setuptools': '<82'}
# Any of these dists provides cv2.
OPENCV = {'opencv-python', 'opencv-python-headless', 'opencv-contrib-python',
          'opencv-contrib-python-headless'}
CSV_COLUMNS = ['arch', 'method', 'device', 'batch_size', 'img_size', 'precision',
               'trainable_backbone', 'activation_mb', 'step_ms', 'step_vs_full',
               'infer_img_s', 'measured_peak_mb', 'measured_kind', 'estimated_peak_mb',
               'measured_vs_estimate']


def canonical(name: str) -> str:
    return re.sub(r'[-_.]+', '-', name).lower()


def packaging_modules():
    """``packaging``'s requirements and version modules: the machine's, else
    the copy pip vendors (this runs before anything is installed)."""
    try:
        from packaging import requirements, version
    except ImportError:
        from pip._vendor.packaging import requirements, version
    return requirements, version


class Fatal(SystemExit):
    """A one-line error that stops the check before any step runs."""

    def __init__(self, message: str):
        super().__init__(f'gpu_check --offline: {message}')


# ---------------------------------------------------------------- interpreter
PROBE = r'''
import json, sys
info = dict(python=sys.version.split()[0], executable=sys.executable)
try:
    import torch
except Exception as e:
    info['torch_error'] = f'{type(e).__name__}: {e}'
else:
    info['torch'] = torch.__version__
    info['cuda'] = torch.cuda.is_available()
    info['cuda_version'] = torch.version.cuda
    if info['cuda']:
        props = torch.cuda.get_device_properties(0)
        info['gpu'] = props.name
        info['gpu_mib'] = props.total_memory // 2**20
        info['cudnn'] = torch.backends.cudnn.version()
print(json.dumps(info))
'''


def probe_interpreter(python: str) -> dict:
    """Python and torch facts of ``python``; :class:`Fatal` if torch is
    missing or older than 2.4."""
    try:
        out = subprocess.run([python, '-c', PROBE], capture_output=True, text=True,
                             timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise Fatal(f'cannot run the interpreter {python!r} ({e}); set PYTHON to the '
                    f'machine\'s python3 with torch')
    if out.returncode != 0:
        raise Fatal(f'{python} failed to start: {out.stderr.strip()[-300:]}')
    info = json.loads(out.stdout.strip().splitlines()[-1])
    if 'torch_error' in info:
        raise Fatal(f'torch does not import in {info["executable"]} (Python {info["python"]}: '
                    f'{info["torch_error"]}); run with the machine\'s own python3 '
                    f'(PYTHON=/path/to/python3), whose torch this check uses')
    found = tuple(int(x) for x in re.findall(r'\d+', info['torch'])[:2])
    if found < MIN_TORCH:
        raise Fatal(f'torch {info["torch"]} in {info["executable"]} is older than '
                    f'{".".join(map(str, MIN_TORCH))}, which mmdtl needs; use a python3 '
                    f'with torch >= 2.4')
    return info


# ---------------------------------------------------------------- install
def read_manifest(wheels: Path) -> dict:
    path = wheels / 'manifest.json'
    if not path.is_file():
        raise Fatal(f'--wheels {wheels}: no manifest.json; make the folder with '
                    f'bash tools/analysis/gpu_check.sh --prepare-wheels {wheels}')
    manifest = json.loads(path.read_text())
    for wheel in manifest['wheels']:
        file = wheels / wheel['file']
        if not file.is_file():
            raise Fatal(f'--wheels {wheels}: {wheel["file"]} is missing (was the folder '
                        f'carried whole?)')
        if file.stat().st_size != wheel['bytes'] or sha256(file) != wheel['sha256']:
            raise Fatal(f'--wheels {wheels}: {wheel["file"]} differs from manifest.json '
                        f'(damaged in transfer?); prepare the folder again')
    return manifest


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(2**20), b''):
            digest.update(block)
    return digest.hexdigest()


def installed_version(name: str):
    """Version of dist ``name`` on this interpreter's own path, or None."""
    names = OPENCV if canonical(name) in OPENCV else {canonical(name)}
    for dist in importlib.metadata.distributions():
        if canonical(dist.metadata['Name'] or '') in names:
            return dist.version
    return None


def plan_install(manifest: dict, have=installed_version) -> tuple:
    """(wheels to install, {name: version the machine keeps}) for the
    wheels of ``manifest``: a wheel is kept off where ``have(name)`` returns
    a version that every requirement on it (the roots: the pinned version or
    :data:`ROOT_SPECIFIERS`) admits."""
    requirements, version = packaging_modules()
    wheels = manifest['wheels']
    specs = {canonical(w['name']): [] for w in wheels}
    for wheel in wheels:
        for line in wheel['requires']:
            req = requirements.Requirement(line)
            if req.marker is not None and not req.marker.evaluate({'extra': ''}):
                continue
            if canonical(req.name) in specs:
                specs[canonical(req.name)].append(req.specifier)
    to_install, kept = [], {}
    for wheel in wheels:
        name = canonical(wheel['name'])
        if not specs[name]:  # a root
            specs[name].append(requirements.Requirement(
                f'{name}{ROOT_SPECIFIERS.get(name, "==" + wheel["version"])}').specifier)
        found = have(wheel['name'])
        if found is not None and all(s.contains(version.Version(found), prereleases=True)
                                     for s in specs[name]):
            kept[wheel['name']] = found
        else:
            to_install.append(wheel)
    return to_install, kept


def pip_environment() -> dict:
    """No pip configuration, index or find-links of the host: the folder only."""
    env = {k: v for k, v in os.environ.items() if not k.startswith('PIP_')}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK='1')
    return env


def check_wheels(wheels: Path) -> dict:
    """The folder's manifest, checked against its files and this Python."""
    manifest = read_manifest(wheels)
    ours = manifest['python_version']
    theirs = '{}.{}'.format(*sys.version_info[:2])
    if ours != theirs:
        raise Fatal(f'--wheels {wheels} holds wheels for Python {ours}, this python is '
                    f'{theirs}: prepare them with --prepare-wheels DIR --python-version {theirs}')
    return manifest


def install(python: str, wheels: Path, site: Path, log) -> dict:
    """Install the wheels the machine lacks into ``site``; reuse a ``site``
    made from the same manifest. Returns what was installed and kept."""
    manifest = check_wheels(wheels)
    stamp = site / '.gpu_check_install.json'
    key = sha256(wheels / 'manifest.json')
    if stamp.is_file():
        done = json.loads(stamp.read_text())
        if done.get('manifest_sha256') == key:
            log(f'reusing {site} (installed from the same manifest)')
            return done
    to_install, kept = plan_install(manifest)
    shutil.rmtree(site, ignore_errors=True)
    site.mkdir(parents=True)
    if to_install:
        cmd = [python, '-m', 'pip', 'install', '--no-index', '--no-deps', '--no-compile',
               '--target', str(site), *[str(wheels / w['file']) for w in to_install]]
        log('$ ' + ' '.join(cmd))
        out = subprocess.run(cmd, capture_output=True, text=True, env=pip_environment())
        log(out.stdout + out.stderr)
        if out.returncode != 0:
            raise RuntimeError(f'pip install --no-index failed (exit {out.returncode}): '
                               f'{out.stderr.strip().splitlines()[-1:]}')
    done = dict(manifest_sha256=key, wheels=str(wheels),
                installed=[f'{w["name"]} {w["version"]}' for w in to_install],
                kept=[f'{n} {v}' for n, v in sorted(kept.items())])
    stamp.write_text(json.dumps(done, indent=1))
    return done


# ---------------------------------------------------------------- verify (child)
def verify_environment(site, giant_arch: str) -> dict:
    """Run in a child with ``PYTHONPATH=site:repo``: imports, versions, unmet
    requirements of what ``site`` holds, mmcv ops (expected absent) and the
    methods benchmark.py offers."""
    requirements, version = packaging_modules()
    out = dict(modules={}, problems=[])
    for name in ('torch', 'torchvision', 'numpy', 'cv2', 'matplotlib', 'pytest', 'mmengine',
                 'mmcv', 'mmpretrain', 'pkg_resources', 'distutils', 'mmdtl'):
        try:
            module = importlib.import_module(name)
        except Exception as e:  # every failure is reported, not raised
            out['modules'][name] = f'MISSING ({type(e).__name__}: {e})'
            out['problems'].append(f'import {name}: {type(e).__name__}: {e}')
            continue
        where = Path(getattr(module, '__file__', '') or '.').resolve()
        origin = ('wheel folder' if site and Path(site).resolve() in where.parents else
                  'repo' if REPO in where.parents else 'machine')
        out['modules'][name] = f'{getattr(module, "__version__", "")} ({origin})'.strip()
    try:
        importlib.import_module('mmcv.ops')
        out['mmcv_ops'] = 'present'
    except Exception as e:
        out['mmcv_ops'] = f'absent ({type(e).__name__}), as built: no mmdet/detection here'
    if site:
        for dist in importlib.metadata.distributions(path=[str(site)]):
            for line in dist.requires or []:
                req = requirements.Requirement(line)
                if req.marker is not None and not req.marker.evaluate({'extra': ''}):
                    continue
                found = installed_version(req.name)
                if found is None:
                    out['problems'].append(f'{dist.metadata["Name"]} requires {line}: '
                                           f'not installed')
                elif not req.specifier.contains(version.Version(found), prereleases=True):
                    out['problems'].append(f'{dist.metadata["Name"]} requires {line}: '
                                           f'found {found}')
    if not any(out['modules'][m].startswith('MISSING') for m in ('torch', 'mmdtl')):
        from mmdtl.analysis import benchmark
        out['methods'] = list(benchmark.ALL_METHODS)
        out['giant_arch_known'] = giant_arch in benchmark.arch_names()
    return out


# ---------------------------------------------------------------- steps
class Steps:
    """Runs commands with time limits inside one budget; records results.

    Args:
        budgets (dict): Step name -> seconds, in the order the steps run.
        deadline (float): ``time.monotonic()`` by which every step must end.
        log_path (Path): The log every step appends to.
        env (dict): The environment of the commands.
    """

    def __init__(self, budgets: dict, deadline: float, log_path: Path, env: dict):
        self.budgets = dict(budgets)
        self.order = list(budgets)
        self.deadline = deadline
        self.log_path = log_path
        self.env = env
        self.results = []

    def split(self, name: str, parts: list) -> None:
        """Replace step ``name`` by ``parts`` ((name, weight) pairs) that
        share its budget by weight."""
        total = sum(weight for _, weight in parts)
        at = self.order.index(name)
        self.order[at:at + 1] = [part for part, _ in parts]
        budget = self.budgets.pop(name)
        self.budgets.update({part: budget * weight / total for part, weight in parts})

    def log(self, text: str) -> None:
        with open(self.log_path, 'a') as f:
            f.write(text.rstrip('\n') + '\n')

    def limit(self, name: str) -> float:
        """This step's limit: what is left of the budget less the budgets of
        the steps still to come (time a step leaves passes to the next)."""
        later = self.order[self.order.index(name) + 1:]
        return self.deadline - time.monotonic() - sum(self.budgets[n] for n in later)

    def skip(self, name: str, why: str, fine: bool = False) -> None:
        """Record ``name`` as not run; ``fine``: asked for, not a failure."""
        self.order.remove(name)
        self.results.append(dict(step=name, result=f'skipped: {why}', seconds=0, limit=None,
                                 fine=fine))
        self.log(f'[gpu_check] {name}: skipped: {why}')

    def run(self, name: str, cmd: list, output: Path = None, env: dict = None) -> bool:
        limit = self.limit(name)
        if limit < 5:
            self.skip(name, 'no time left in the budget (--budget-s)')
            return False
        self.log(f'[gpu_check] {name} (limit {limit:.0f} s): $ ' + ' '.join(map(str, cmd)))
        print(f'[gpu_check] {name} (limit {limit:.0f} s) ...', flush=True)
        tic = time.monotonic()
        with open(output or self.log_path, 'a') as sink:
            # Its own process group: a timeout ends the benchmark's children too.
            proc = subprocess.Popen([str(c) for c in cmd], stdout=sink,
                                    stderr=subprocess.STDOUT, cwd=REPO,
                                    env=env or self.env, start_new_session=True)
            try:
                rc = proc.wait(timeout=limit)
                result = 'ok' if rc == 0 else f'FAILED (exit {rc})'
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                result = f'TIMED OUT after {limit:.0f} s'
        took = time.monotonic() - tic
        if output:
            self.log(Path(output).read_text()[-20000:])
        self.results.append(dict(step=name, result=result, seconds=took, limit=limit,
                                 output=str(output) if output else None))
        print(f'[gpu_check] {name}: {result} ({took:.0f} s)', flush=True)
        return result == 'ok'

    def record(self, name: str, result: str, seconds: float) -> None:
        self.results.append(dict(step=name, result=result, seconds=seconds, limit=None))
        print(f'[gpu_check] {name}: {result} ({seconds:.0f} s)', flush=True)

    @property
    def ok(self) -> bool:
        return all(r['result'] == 'ok' or r.get('fine') for r in self.results)


# ---------------------------------------------------------------- report
def merge_benchmark_parts(bench_dir: Path, methods: list) -> None:
    """``bench_dir/benchmark.csv``: the rows of the ``part*/benchmark.csv``
    that finished, in ``methods`` order, ratios to full fine-tuning
    recomputed across parts where full fine-tuning ran."""
    rows, columns = {}, []
    for part in sorted(bench_dir.glob('part*/benchmark.csv')):
        with open(part, newline='') as f:
            reader = csv.DictReader(f)
            columns += [c for c in reader.fieldnames if c not in columns]
            rows.update((row['method'], row) for row in reader)
    if not rows:
        return
    full = rows.get('full')
    for row in rows.values():
        if full is not None:
            for column, base in (('activation_vs_full', 'activation_mb'),
                                 ('step_vs_full', 'step_ms')):
                if column in row and float(full[base]):
                    row[column] = float(row[base]) / float(full[base])
    with open(bench_dir / 'benchmark.csv', 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows[m] for m in methods if m in rows)


def read_csv(path: Path) -> list:
    if not path.is_file():
        return []
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def combined_rows(work_dir: Path, device: str, profile: dict, runs: list) -> list:
    """One row per (arch, method) measured: benchmark.py's figures, the
    measured peak of ``profile``'s kind and memory_scaling.py's estimate."""
    rows = []
    for arch, img_size, _ in runs:
        estimates = {r['method']: r for r in read_csv(
            work_dir / f'memory_scaling_{arch}' / 'memory_scaling.csv') if r['arch'] == arch}
        for bench in read_csv(work_dir / f'benchmark_{arch}' / 'benchmark.csv'):
            measured = float(bench[profile['peak_column']])
            estimate = estimates.get(bench['method'])
            estimated = float(estimate['peak_mb']) if estimate else None
            rows.append(dict(
                arch=arch, method=bench['method'], device=device,
                batch_size=profile['batch_size'], img_size=img_size,
                precision=profile['precision'],
                trainable_backbone=int(bench['trainable_backbone']),
                activation_mb=round(float(bench['activation_mb']), 3),
                step_ms=round(float(bench['step_ms']), 1),
                step_vs_full=_round(bench.get('step_vs_full'), 3),
                infer_img_s=round(float(bench['infer_img_s']), 1),
                measured_peak_mb=round(measured, 3), measured_kind=profile['peak_kind'],
                estimated_peak_mb=None if estimated is None else round(estimated, 3),
                measured_vs_estimate=None if not estimated else round(measured / estimated - 1, 4)))
    return rows


def fmt_mb(value: float) -> str:
    """MB with 3 significant digits below 100 (toy models), else 1 decimal."""
    return f'{value:.3g}' if value < 100 else f'{value:.1f}'


def _round(value, digits):
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if value != value else round(value, digits)


def write_report(work_dir: Path, args, info: dict, env_info: dict, install_info: dict,
                 steps: Steps, rows: list, runs: list, started: float) -> Path:
    device = args.device
    profile = PROFILES[device]
    with open(work_dir / 'gpu_check.csv', 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    try:  # the copy on the device machine may come without git or .git
        commit = subprocess.run(['git', '-C', str(REPO), 'rev-parse', '--short', 'HEAD'],
                                capture_output=True, text=True).stdout.strip() or '?'
    except OSError:
        commit = '?'
    now = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
    lines = ['# mmdtl GPU check (offline)', '']
    if device == 'cuda':
        lines += [f'GPU: **{info["gpu"]}** ({info["gpu_mib"]:,} MiB), torch {info["torch"]}, '
                  f'CUDA {info["cuda_version"]}, cuDNN {info.get("cudnn")}.', '']
    else:
        why = ('torch.cuda.is_available() is False on this machine' if not info['cuda']
               else '--device cpu was asked for')
        lines += ['**No GPU was available** (' + why + '): this is the CPU fallback at small '
                  'settings, a rehearsal of every step but the GPU. None of the figures below '
                  'is a GPU measurement.', '']
    total = time.monotonic() - started
    lines += [f'{now}, commit {commit}; Python {info["python"]} ({info["executable"]}), '
              f'torch {info["torch"]}; {total:.0f} s in all (budget {args.budget_s:g} s).',
              '']
    if install_info:
        lines += [f'Wheel folder `{install_info["wheels"]}`: installed into `{args.site}`: '
                  f'{", ".join(install_info["installed"]) or "nothing"}; the machine\'s own: '
                  f'{", ".join(install_info["kept"]) or "none"}.', '']
    if env_info:
        lines += ['| module | version (from) |', '|---|---|']
        lines += [f'| {k} | {v} |' for k, v in env_info.get('modules', {}).items()]
        lines += ['', f'mmcv ops: {env_info.get("mmcv_ops", "?")}.', '']
        for problem in env_info.get('problems', []):
            lines.append(f'- problem: {problem}')
    lines += ['## Steps', '', '| step | result | time | limit |', '|---|---|---|---|']
    for r in steps.results:
        limit = '-' if r['limit'] is None else f'{r["limit"]:.0f} s'
        lines.append(f'| {r["step"]} | {r["result"]} | {r["seconds"]:.0f} s | {limit} |')
    lines += ['']
    tests_log = work_dir / 'cuda_tests.log'
    if tests_log.is_file():
        summary = [ln for ln in tests_log.read_text().splitlines()
                   if re.match(r'(PASSED|FAILED|SKIPPED|ERROR)\b', ln)
                   or re.search(r'\d+ (passed|failed|skipped|error)', ln)]
        lines += ['## CUDA tests' + (' (CPU dry run, MMDTL_TEST_DEVICE=cpu)'
                                     if device == 'cpu' else ''), '', '```', *summary[-20:],
                  '```', '']
    lines += [f'## Measured vs estimated ({device}, batch {profile["batch_size"]}, '
              f'{profile["precision"]})', '',
              f'Measured peak: {profile["peak_kind"]} (benchmark.py); estimate: '
              f'memory_scaling.py on fake tensors; error = measured / estimate - 1.'
              + (' At these toy sizes fixed costs dominate: the errors say nothing of the '
                 'estimator at batch 32 and 224 px.' if device == 'cpu' else ''), '',
              '| arch | method | step ms | activations MB | measured peak MB | '
              'estimated MB | error |', '|---|---|---|---|---|---|---|']
    for r in rows:
        error = ('-' if r['measured_vs_estimate'] is None
                 else f'{100 * r["measured_vs_estimate"]:+.1f} %')
        estimated = '-' if r['estimated_peak_mb'] is None else fmt_mb(r['estimated_peak_mb'])
        lines.append(f'| {r["arch"]} | {r["method"]} | {r["step_ms"]:.1f} | '
                     f'{fmt_mb(r["activation_mb"])} | {fmt_mb(r["measured_peak_mb"])} | '
                     f'{estimated} | {error} |')
    if not rows:
        lines.append('| (no measurements) | | | | | | |')
    done = {(r['arch'], r['method']) for r in rows}
    for arch, _, methods in runs:
        lost = [m for m in methods if (arch, m) not in done]
        if lost:
            lines += ['', f'Not measured on {arch} (its benchmark.py call failed or ran out '
                          f'of time, see Steps): {", ".join(lost)}.']
    lines += ['', "## The tools' own tables"]
    for arch, _, _ in runs:
        tables = sorted((work_dir / f'benchmark_{arch}').glob('part*/benchmark.md'),
                        key=lambda p: int(p.parent.name[4:]))
        for path in tables + [work_dir / f'memory_scaling_{arch}' / 'memory_scaling.md']:
            if path.is_file():
                lines += ['', re.sub(r'^# ', '### ', path.read_text(), flags=re.M).rstrip()]
    failed = [r for r in steps.results if r['result'] != 'ok' and not r.get('fine')]
    for r in failed:
        if r.get('output') and Path(r['output']).is_file():
            tail = Path(r['output']).read_text().splitlines()[-15:]
            lines += ['', f'### Why "{r["step"]}" did not pass (last lines)', '', '```',
                      *tail, '```']
    lines += ['', f'Full log: `{steps.log_path}`; table: `{work_dir / "gpu_check.csv"}`.', '']
    report = work_dir / 'report.md'
    report.write_text('\n'.join(lines))
    return report


# ---------------------------------------------------------------- run
def run_check(args) -> int:
    """Run every step of the check within ``args.budget_s`` and write the
    report; returns the exit status (0: every step passed or was skipped on
    purpose).

    Args:
        args: The options of ``tools/analysis/gpu_check_offline.py``
            (``work_dir``, ``wheels``, ``site``, ``device``, ``budget_s``,
            ``methods``, ``giant_methods``, ``skip``).
    """
    started = time.monotonic()
    python = sys.executable
    work_dir = Path(args.work_dir).resolve()
    info = probe_interpreter(python)
    if args.device == 'cuda' and not info['cuda']:
        raise Fatal(f'--device cuda, but torch {info["torch"]} sees no GPU here; leave '
                    f'--device out for the CPU fallback')
    if args.device == 'auto':
        args.device = 'cuda' if info['cuda'] else 'cpu'
    profile = PROFILES[args.device]
    if args.wheels and not Path(args.wheels).is_dir():
        raise Fatal(f'--wheels {args.wheels}: no such folder; make it with '
                    f'bash tools/analysis/gpu_check.sh --prepare-wheels {args.wheels}')
    wheels = Path(args.wheels).resolve() if args.wheels else None
    if wheels:
        check_wheels(wheels)  # a bad folder stops here, before any step
    site = Path(args.site).resolve() if args.site else work_dir / 'site'
    args.site = str(site)
    work_dir.mkdir(parents=True, exist_ok=True)
    log_path = work_dir / 'gpu_check.log'
    log_path.write_text('')
    paths = ([str(site)] if wheels else []) + [str(REPO)]
    if os.environ.get('PYTHONPATH'):
        paths.append(os.environ['PYTHONPATH'])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths), PYTHONUNBUFFERED='1',
               MPLBACKEND='Agg')
    if args.budget_s is None:
        args.budget_s = DEFAULT_BUDGET_S[args.device]
    scale = args.budget_s / DEFAULT_BUDGET_S['cuda']
    # The probe counts; 5 s stay for the report.
    steps = Steps({n: b * scale for n, b in BUDGETS.items()},
                  started + args.budget_s - 5, log_path, env)
    where = f'GPU {info["gpu"]}' if args.device == 'cuda' else 'no GPU: CPU fallback'
    print(f'[gpu_check] {where}; Python {info["python"]}, torch {info["torch"]}; '
          f'work dir {work_dir}', flush=True)

    main_arch, main_img, main_methods = profile['main']
    giant_arch, giant_img, giant_methods = profile['giant']
    install_info, env_info = {}, {}
    if wheels:
        tic = time.monotonic()
        try:
            install_info = install(python, wheels, site, steps.log)
            steps.record('install', 'ok', time.monotonic() - tic)
        except RuntimeError as e:
            steps.record('install', f'FAILED: {e}', time.monotonic() - tic)
        steps.order.remove('install')
    else:
        steps.skip('install', "no wheel folder: the interpreter's own packages", fine=True)

    verify_out = work_dir / 'verify.json'
    verify_out.unlink(missing_ok=True)
    steps.run('verify', [python, str(Path(__file__).resolve()), '--verify-env',
                         json.dumps([str(site) if wheels else '', giant_arch, str(verify_out)])],
              output=work_dir / 'verify.log')
    if verify_out.is_file():
        env_info = json.loads(verify_out.read_text())
        if env_info['problems']:
            hint = '' if wheels else ' (no --wheels given: pass the folder of --prepare-wheels)'
            steps.results[-1]['result'] = ('FAILED: ' + '; '.join(env_info['problems'][:3])
                                           + hint)
    usable = bool(env_info) and not any(p.startswith('import ') for p in env_info['problems'])
    if usable and 'giant' not in args.skip and not env_info.get('giant_arch_known'):
        steps.results[-1]['result'] = f'FAILED: benchmark.py does not know {giant_arch}'
        usable = False
    incomplete = 'the environment is incomplete (see verify)'
    runs = [('main', main_arch, main_img,
             args.methods or main_methods or env_info.get('methods', []))]
    if 'giant' in args.skip:
        steps.skip('benchmark giant', 'by --skip', fine=True)
        steps.skip('estimates giant', 'by --skip', fine=True)
    else:
        runs.append(('giant', giant_arch, giant_img, args.giant_methods or giant_methods))

    if 'tests' in args.skip:
        steps.skip('cuda tests', 'by --skip', fine=True)
    elif not usable:
        steps.skip('cuda tests', incomplete)
    else:
        test_env = dict(env, **({'MMDTL_TEST_DEVICE': 'cpu'} if args.device == 'cpu' else {}))
        steps.run('cuda tests', [python, '-m', 'pytest', '-q', '-rA', '-p', 'no:cacheprovider',
                                 'tests/test_cuda'],
                  output=work_dir / 'cuda_tests.log', env=test_env)

    for key, arch, img, methods in runs:
        name = f'benchmark {key}'
        if not usable:
            steps.skip(name, incomplete)
            continue
        chunks = [methods[i:i + CHUNK[key]] for i in range(0, len(methods), CHUNK[key])]
        parts = [(f'{name} {i}/{len(chunks)}' if len(chunks) > 1 else name, len(chunk))
                 for i, chunk in enumerate(chunks, 1)]
        steps.split(name, parts)
        bench_dir = work_dir / f'benchmark_{arch}'
        shutil.rmtree(bench_dir, ignore_errors=True)
        for i, ((part, _), chunk) in enumerate(zip(parts, chunks), 1):
            steps.run(part, [python, 'tools/analysis/benchmark.py', '--arch', arch,
                             '--methods', *chunk, '--batch-size', profile['batch_size'],
                             '--img-size', img, '--device', args.device,
                             '--warmup', profile['warmup'], '--repeats', profile['repeats'],
                             *profile['bench_args'], '--work-dir', bench_dir / f'part{i}'],
                      output=work_dir / f'benchmark_{arch}.log')
        merge_benchmark_parts(bench_dir, methods)

    for key, arch, img, methods in runs:
        name = f'estimates {key}'
        # A warm cache and packed weights need real kernels: not estimated.
        estimable = [m for m in methods if 'cache' not in m and 'packed' not in m]
        measured = work_dir / f'benchmark_{arch}' / 'benchmark.csv'
        if 'estimates' in args.skip:
            steps.skip(name, 'by --skip', fine=True)
            continue
        if not usable:
            steps.skip(name, incomplete)
            continue
        steps.run(name, [python, 'tools/analysis/memory_scaling.py', '--archs', arch,
                         '--methods', *estimable, '--batch-size', profile['batch_size'],
                         '--img-size', img, '--validate',
                         *(['--measured', f'{arch}={measured}'] if measured.is_file() else []),
                         '--work-dir', work_dir / f'memory_scaling_{arch}'],
                  output=work_dir / f'memory_scaling_{arch}.log')

    runs = [(arch, img, methods) for _, arch, img, methods in runs]
    rows = combined_rows(work_dir, args.device, profile, runs)
    report = write_report(work_dir, args, info, env_info, install_info, steps, rows, runs,
                          started)
    print(f'[gpu_check] wrote {report} and {work_dir / "gpu_check.csv"} '
          f'({time.monotonic() - started:.0f} s)', flush=True)
    return 0 if steps.ok else 1



def _verify_main(argv=None) -> None:
    """The ``verify`` step's child: :func:`verify_environment` as JSON."""
    parser = argparse.ArgumentParser(description='the verify step of the GPU check')
    parser.add_argument('--verify-env', required=True,
                        help='JSON [site, giant arch, output file]')
    site, giant_arch, out = json.loads(parser.parse_args(argv).verify_env)
    Path(out).write_text(json.dumps(verify_environment(site, giant_arch)))


if __name__ == '__main__':
    # Run by path, this file's folder heads sys.path: drop it so that nothing
    # here shadows a top-level module (mmdtl is imported from PYTHONPATH).
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]
    _verify_main()
