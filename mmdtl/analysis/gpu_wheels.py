"""The wheel folder that the offline GPU check installs from.

The GPU machine this project is sometimes lent has no network at all (no pip
index), Python 3.12 and its own torch (CUDA 13), torchvision, numpy and
OpenCV, but no mmengine, mmcv or mmpretrain. Run where PyPI answers,
:func:`prepare_wheels` puts into one folder every other package mmdtl needs
there:

- the pinned wheels of :data:`PINS` (mmengine, mmpretrain and what they and
  mmcv need) for the target Python on manylinux x86_64, downloaded with
  ``pip download --only-binary :all: --python-version X --platform ...``;
- mmcv 2.1.0 built from its sdist with ``MMCV_WITH_OPS=0``: a pure-Python
  wheel, since compiling mmcv's CUDA ops does not fit the machine's 15
  minutes. What needs the ops (mmdet's heads, detection) cannot run from
  this folder.

It then checks that every requirement of every wheel (markers evaluated for
the target Python on Linux x86_64) is met by a wheel of the folder or by
:data:`MACHINE_PROVIDES`, and that the folder is at most the size limit
(60 MiB by default: the device machine takes 64 MiB per call, the working
tree included), and writes :data:`MANIFEST`, which
:mod:`mmdtl.analysis.gpu_check` reads. Nothing is written to the manifest
when a check fails.

``tools/misc/prepare_gpu_wheels.py`` is the command line. This module
imports only the standard library at module level (``packaging`` and the
report writer, which needs torch, are imported where they are used), so that
its names can serve code that runs before mmdtl's dependencies are
installed.
"""
import datetime
import email.parser
import hashlib
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Iterable, List, Optional

MIB = 2**20
# The versions mmdtl's CPU environment (tools/install.sh) runs with, so the GPU
# check runs the code tested here. Each has a wheel for CPython 3.11-3.13.
PINS = [
    ('mmengine', '0.10.7'),
    ('mmpretrain', '1.2.0'),
    # mmengine's and mmcv's
    ('addict', '2.4.0'),
    ('yapf', '0.43.0'),
    ('platformdirs', '4.14.9'),
    ('termcolor', '3.3.0'),
    ('rich', '15.0.0'),
    ('markdown-it-py', '4.3.0'),
    ('mdurl', '0.1.2'),
    ('pygments', '2.21.0'),
    ('pyyaml', '6.0.4'),
    ('packaging', '26.4'),
    ('pillow', '13.0.0'),
    # mmpretrain's
    ('einops', '0.8.2'),
    ('importlib-metadata', '10.2.0'),
    ('zipp', '4.1.2'),
    ('lazy-importer', '0.1.0'),
    ('mat4py', '0.6.0'),
    ('modelindex', '0.0.2'),
    ('model-index', '0.1.11'),
    ('click', '8.5.1'),
    ('markdown', '3.11.3'),
    ('ordered-set', '4.1.0'),
    # matplotlib (mmengine and mmpretrain need it; the GPU image has one, a
    # bare image may not)
    ('matplotlib', '3.11.2'),
    ('contourpy', '1.3.3'),
    ('cycler', '0.12.1'),
    ('fonttools', '4.68.0'),
    ('kiwisolver', '1.5.1'),
    ('pyparsing', '3.3.3'),
    ('python-dateutil', '4.0.0'),
    ('tzdata', '2026.6'),
    # mmengine 0.10.7 imports pkg_resources (gone from setuptools 82 on) and,
    # in the Runner's environment report, distutils (Python 3.12 has it only
    # through setuptools).
    ('setuptools', '81.0.0'),
]
# Built from the sdist without ops.
MMCV = ('mmcv', '2.1.0')
# Installed on the GPU machine with its CUDA build of torch: never carried
# (torch and torchvision alone are several GB). The offline check verifies
# that they import.
MACHINE_PROVIDES = {
    'torch': 'torch >= 2.4 (the CUDA build of the machine)',
    'torchvision': 'torchvision (mmpretrain imports it)',
    'numpy': 'numpy',
    'opencv-python': 'OpenCV (cv2; opencv-python-headless does too)',
    'opencv-python-headless': 'OpenCV (cv2)',
}
# manylinux tags pip must accept for the binary wheels of PINS.
PLATFORMS = ['manylinux2014_x86_64', 'manylinux_2_17_x86_64', 'manylinux_2_27_x86_64',
             'manylinux_2_28_x86_64']
DEFAULT_MAX_MIB = 60
MANIFEST = 'manifest.json'
# mmcv's setup.py calls an ops-less build 'mmcv-lite'; mmdtl checks the
# installed distribution 'mmcv' (mmdtl/requirements.py), so the build keeps
# the name: the same source, and `import mmcv.ops` fails without its _ext.
MMCV_NAME_LINE = "name='mmcv' if os.getenv('MMCV_WITH_OPS', '1') == '1' else 'mmcv-lite',"


class PrepareWheelsError(Exception):
    """The wheel folder cannot be made: the message names the folder or file
    at fault and what to do (the command line prints it and exits 1)."""


def canonical(name: str) -> str:
    """PEP 503 name: ``PyYAML`` and ``pyyaml``, ``markdown_it_py`` and
    ``markdown-it-py`` are the same package."""
    return re.sub(r'[-_.]+', '-', name).lower()


def wheel_metadata(path) -> dict:
    """``name``, ``version`` and ``requires`` (Requires-Dist lines) of a
    wheel file, read from its ``*.dist-info/METADATA``.

    Args:
        path (str | Path): The wheel file.

    Raises:
        zipfile.BadZipFile: ``path`` is not a zip archive.
        ValueError: The archive has no single ``*.dist-info/METADATA``.
    """
    with zipfile.ZipFile(path) as wheel:
        names = [n for n in wheel.namelist()
                 if n.count('/') == 1 and n.endswith('.dist-info/METADATA')]
        if len(names) != 1:
            raise ValueError(f'{path}: not a wheel (expected one *.dist-info/METADATA, '
                             f'found {len(names)})')
        meta = email.parser.Parser().parsestr(wheel.read(names[0]).decode('utf-8'))
    return dict(name=meta['Name'], version=meta['Version'],
                requires=meta.get_all('Requires-Dist') or [])


def sha256(path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(2**20), b''):
            digest.update(block)
    return digest.hexdigest()


def wheel_entry(path) -> dict:
    """A wheel's entry in :data:`MANIFEST`: its :func:`wheel_metadata` plus
    ``file`` (the base name), ``bytes`` and ``sha256``, which the offline
    check verifies after the transfer."""
    path = Path(path)
    return dict(wheel_metadata(path), file=path.name, bytes=path.stat().st_size,
                sha256=sha256(path))


def target_environment(python_version: str) -> dict:
    """PEP 508 marker variables of CPython ``python_version`` on Linux x86_64."""
    return dict(python_version=python_version, python_full_version=f'{python_version}.0',
                implementation_name='cpython', implementation_version=f'{python_version}.0',
                platform_python_implementation='CPython', platform_system='Linux',
                platform_machine='x86_64', platform_release='', platform_version='',
                sys_platform='linux', os_name='posix', extra='')


def missing_requirements(wheels: List[dict], python_version: str,
                         provided=MACHINE_PROVIDES) -> List[str]:
    """What the wheels require for CPython ``python_version`` on Linux and
    neither another wheel of the list (at a version the specifier admits)
    nor ``provided`` gives: one line each.

    Args:
        wheels (list[dict]): :func:`wheel_metadata` dicts.
        python_version (str): The target's ``3.N``; markers are evaluated
            for it (an extra, another platform or Python is skipped).
        provided (Iterable[str]): Canonical names the machine has.
            Defaults to :data:`MACHINE_PROVIDES`.
    """
    from packaging.requirements import Requirement
    from packaging.version import Version

    env = target_environment(python_version)
    have = {canonical(w['name']): Version(w['version']) for w in wheels}
    problems = []
    for wheel in wheels:
        for line in wheel['requires']:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate(env):
                continue  # an extra, or another platform or Python
            name = canonical(req.name)
            if name in provided:
                continue
            if name not in have:
                problems.append(f'{wheel["name"]} {wheel["version"]} requires {line!r}: '
                                f'no wheel of {req.name} in the folder (add it to PINS)')
            elif not req.specifier.contains(have[name], prereleases=True):
                problems.append(f'{wheel["name"]} {wheel["version"]} requires {line!r}: '
                                f'the folder has {req.name} {have[name]} (change PINS)')
    return problems


def size_problem(files: Iterable, max_bytes: int) -> Optional[str]:
    """None if the files add up to at most ``max_bytes``, else a message that
    names the total, the limit and the largest files."""
    sizes = sorted(((Path(f).stat().st_size, Path(f).name) for f in files), reverse=True)
    total = sum(size for size, _ in sizes)
    if total <= max_bytes:
        return None
    largest = ', '.join(f'{name} {size / MIB:.1f} MiB' for size, name in sizes[:5])
    return (f'the wheel folder is {total / MIB:.1f} MiB, over the {max_bytes / MIB:g} MiB '
            f'limit (the device machine takes 64 MiB per call, the working tree included); '
            f'largest: {largest}')


def pip_env() -> dict:
    """The environment of the pip calls: no version-check noise."""
    return dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK='1')


def run_logged(cmd: list, **kwargs) -> None:
    """Print ``cmd`` and run it; a failure raises ``CalledProcessError``."""
    print('[prepare-wheels] $', ' '.join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, env=kwargs.pop('env', pip_env()),
                   **kwargs)


def download(dest: Path, python_version: str) -> None:
    """The wheels of :data:`PINS` for the target Python (no dependency
    resolution: the list is complete, :func:`missing_requirements` checks)."""
    platforms = [arg for p in PLATFORMS for arg in ('--platform', p)]
    run_logged([sys.executable, '-m', 'pip', 'download', '--quiet', '--no-deps',
                '--only-binary=:all:', '--implementation', 'cp', '--python-version',
                python_version, *platforms, '--dest', dest,
                *[f'{name}=={version}' for name, version in PINS]])


def build_mmcv(dest: Path) -> None:
    """mmcv's sdist built without ops into a pure-Python wheel, in a
    throw-away venv with ``setuptools<82`` (mmcv's setup.py imports
    pkg_resources) and no torch (nothing to compile against)."""
    name, version = MMCV
    with tempfile.TemporaryDirectory(prefix='mmcv-build-') as tmp:
        tmp = Path(tmp)
        run_logged([sys.executable, '-m', 'venv', tmp / 'venv'])
        python = tmp / 'venv' / 'bin' / 'python'
        run_logged([python, '-m', 'pip', 'install', '--quiet', 'setuptools<82', 'wheel'])
        run_logged([python, '-m', 'pip', 'download', '--quiet', '--no-deps',
                    '--no-binary=:all:', '--dest', tmp / 'sdist', f'{name}=={version}'])
        sdist, = (tmp / 'sdist').iterdir()
        with tarfile.open(sdist) as archive:
            archive.extractall(tmp / 'src', filter='data')
        source, = (tmp / 'src').iterdir()
        setup_py = source / 'setup.py'
        text = setup_py.read_text()
        if MMCV_NAME_LINE not in text:
            raise PrepareWheelsError(
                f'[prepare-wheels] {sdist.name}: setup.py no longer names the ops-less build '
                f'as expected ({MMCV_NAME_LINE!r}); update MMCV_NAME_LINE in {__file__}')
        setup_py.write_text(text.replace(MMCV_NAME_LINE, "name='mmcv',"))
        run_logged([python, '-m', 'pip', 'wheel', '--quiet', '--no-deps',
                    '--no-build-isolation', '--wheel-dir', dest, source],
                   env=dict(pip_env(), MMCV_WITH_OPS='0'))


def travel_bytes(repo: Path) -> Optional[int]:
    """Bytes of the working tree that travels to the device machine (tracked
    and untracked-not-ignored files), or None outside a git checkout."""
    try:
        out = subprocess.run(['git', '-C', str(repo), 'ls-files', '-z', '-co',
                              '--exclude-standard'], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    paths = [repo / p for p in out.decode().split('\0') if p]
    return sum(p.stat().st_size for p in paths if p.is_file())


def prepare_folder(dest: Path) -> None:
    """Make ``dest`` an empty folder; one this tool made before loses its
    wheels and manifest. :class:`PrepareWheelsError` if it holds other files."""
    if dest.exists() and any(dest.iterdir()):
        if not (dest / MANIFEST).is_file() and not all(
                p.suffix == '.whl' for p in dest.iterdir()):
            raise PrepareWheelsError(f'--prepare-wheels {dest}: the folder holds files this '
                                     f'tool did not write; choose an empty or new folder')
        for path in dest.iterdir():
            if path.suffix == '.whl' or path.name == MANIFEST:
                path.unlink()
    dest.mkdir(parents=True, exist_ok=True)


def check_folder(wheels: List[dict], files: List[Path], python_version: str,
                 max_bytes: int) -> None:
    """:class:`PrepareWheelsError` if a requirement is unmet
    (:func:`missing_requirements`) or the folder is too big
    (:func:`size_problem`)."""
    problems = missing_requirements(wheels, python_version)
    if problems:
        raise PrepareWheelsError('[prepare-wheels] incomplete folder:\n  '
                                 + '\n  '.join(problems))
    problem = size_problem(files, max_bytes)
    if problem:
        raise PrepareWheelsError(f'[prepare-wheels] {problem}')


def make_manifest(wheels: List[dict], python_version: str) -> dict:
    """The content of :data:`MANIFEST` for the :func:`wheel_entry` dicts of a
    folder prepared for CPython ``python_version``."""
    return dict(
        python_version=python_version, platforms=PLATFORMS,
        created=datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
        pins=[f'{n}=={v}' for n, v in PINS] + [f'{MMCV[0]}=={MMCV[1]} (MMCV_WITH_OPS=0)'],
        machine_provides=sorted(MACHINE_PROVIDES),
        total_bytes=sum(w['bytes'] for w in wheels), wheels=wheels)


def prepare_wheels(dest, python_version: str = '3.12',
                   max_mib: float = DEFAULT_MAX_MIB,
                   fetch: Optional[Callable[[Path, str], None]] = None) -> dict:
    """Fill ``dest`` with the wheels the GPU machine lacks, check them and
    write :data:`MANIFEST` (atomically, through :mod:`mmdtl.utils.report`).

    Args:
        dest (str | Path): The folder (empty, new, or made by this function
            before).
        python_version (str): The target's CPython ``3.N``. Defaults to
            ``'3.12'``, the GPU machine's.
        max_mib (float): Largest total size of the wheels in MiB. Defaults
            to 60.
        fetch (Callable, optional): ``fetch(dest, python_version)`` puts the
            wheels into ``dest``. Defaults to None: :func:`download` the
            pins, then :func:`build_mmcv` (needs PyPI).

    Returns:
        dict: The manifest written.

    Raises:
        PrepareWheelsError: The folder holds other files, a requirement is
            unmet, or the wheels exceed ``max_mib``; no manifest is written.
    """
    # Imported here: mmdtl.utils.report needs torch, this module must not.
    from mmdtl.utils.report import write_json

    dest = Path(dest).resolve()
    prepare_folder(dest)
    if fetch is None:
        download(dest, python_version)
        build_mmcv(dest)
    else:
        fetch(dest, python_version)
    files = sorted(dest.glob('*.whl'))
    wheels = [wheel_entry(f) for f in files]
    check_folder(wheels, files, python_version, int(max_mib * MIB))
    manifest = make_manifest(wheels, python_version)
    write_json(str(dest / MANIFEST), manifest, indent=1)
    return manifest
