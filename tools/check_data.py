"""Check a dataset root for one of the paper's protocols before training.

Every split file must be present; every line must be ``<relpath> <label>``
with a label in range; every listed image must exist and decode whole with
PIL (``verify``, then a full decode to RGB, which catches truncated files).
Every problem is printed with its file and line; the exit code is 1 when there are problems.
The checks are ``mmdtl.datasets.check_data``; this script parses the command line.

Examples::

    python tools/check_data.py vtab --data-root data/vtab-1k
    python tools/check_data.py few-shot --data-root data/fgfs --shots 1 16
    python tools/check_data.py domain-generalization --data-root data/dg --workers 16
    python tools/check_data.py vtab --data-root data/vtab-1k --names cifar dtd --no-verify
    python tools/check_data.py dense-scenes --data-root data/dense-scenes --names train

``dense-scenes`` (the folder of ``tools/misc/make_dense_scenes.py``) checks the
COCO files against their images (sizes, boxes = tight boxes of the masks,
areas, categories), the label maps (size, values in [0, 21) or 255), that each
label map is the union of its image's instance masks, and the annotation files
against the sha256s in ``meta.json``.
"""
import argparse
import os.path as osp
import sys

from mmdtl.datasets.check_data import SUITE_ALIASES, SUITES, check_data_root
from mmdtl.datasets.few_shot import FEW_SHOT_SEEDS


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Check a dataset root: split files, labels and images.')
    parser.add_argument('suite', choices=SUITES + tuple(SUITE_ALIASES),
                        help='which protocol\'s data to check')
    parser.add_argument('--data-root', required=True, help='the dataset root of the suite')
    parser.add_argument('--names', nargs='+',
                        help='only these tasks / datasets / splits (default: all of the suite)')
    parser.add_argument('--shots', nargs='+', type=int,
                        help='few-shot train lists to check (default: 1 2 4 8 16 for few-shot, '
                        '16 for domain-generalization)')
    parser.add_argument('--seeds', nargs='+', type=int, default=list(FEW_SHOT_SEEDS),
                        help='seeds of the train lists to check (default: 0 1 2)')
    parser.add_argument('--no-verify', action='store_true',
                        help='only check that listed images exist, do not open them')
    parser.add_argument('--workers', type=int, default=8, help='threads verifying images')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not osp.isdir(args.data_root):
        print(f'PROBLEM: --data-root {args.data_root} is not a folder.')
        return 1
    problems = check_data_root(args.suite, args.data_root, names=args.names, shots=args.shots,
                               seeds=args.seeds, verify=not args.no_verify,
                               workers=args.workers)
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
