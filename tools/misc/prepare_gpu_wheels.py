"""Prepare the wheel folder that the offline GPU check installs from.

Run here, where PyPI answers: the pinned wheels of mmdtl's dependencies that
the GPU machine lacks (mmengine, mmpretrain and theirs) for its Python on
manylinux x86_64, and mmcv built without ops (pure Python), checked complete
and at most ``--max-mib``, with the ``manifest.json`` that
``tools/analysis/gpu_check_offline.py`` reads. The pins, the build and the
checks are :mod:`mmdtl.analysis.gpu_wheels`; the tool exits non-zero, and
writes no manifest, when a check fails.

Usage::

    bash tools/analysis/gpu_check.sh --prepare-wheels work_dirs/gpu_wheels
    python tools/misc/prepare_gpu_wheels.py work_dirs/gpu_wheels --python-version 3.11
"""
import argparse
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from mmdtl.analysis.gpu_wheels import (  # noqa: E402
    DEFAULT_MAX_MIB,
    MIB,
    PrepareWheelsError,
    prepare_wheels,
    travel_bytes,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('dest', help='the wheel folder to write (empty or new)')
    parser.add_argument('--python-version', default='3.12',
                        help='CPython minor version of the target machine (default 3.12, '
                             'the GPU machine\'s)')
    parser.add_argument('--max-mib', type=float, default=DEFAULT_MAX_MIB,
                        help='largest total size of the folder in MiB (default 60)')
    args = parser.parse_args(argv)
    if not re.fullmatch(r'3\.\d+', args.python_version):
        parser.error(f'--python-version {args.python_version!r}: expected 3.N, e.g. 3.12')
    return args


def main(argv=None):
    args = parse_args(argv)
    dest = Path(args.dest).resolve()
    try:
        manifest = prepare_wheels(dest, args.python_version, args.max_mib)
    except PrepareWheelsError as e:
        raise SystemExit(str(e))
    for wheel in manifest['wheels']:
        print(f'  {wheel["bytes"] / MIB:6.2f} MiB  {wheel["file"]}')
    total = manifest['total_bytes']
    print(f'[prepare-wheels] {len(manifest["wheels"])} wheels for CPython '
          f'{args.python_version}, {total / MIB:.1f} MiB (limit {args.max_mib:g} MiB), '
          f'in {dest}')
    tree = travel_bytes(REPO)
    if tree is not None:
        print(f'[prepare-wheels] working tree that travels: {tree / MIB:.1f} MiB; with the '
              f'folder carried: {(tree + total) / MIB:.1f} MiB of the 64 MiB a device call takes')


if __name__ == '__main__':
    main()
