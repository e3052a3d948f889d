"""Write the demo's mini VTAB-1k (three tasks, two sources) as VTAB-1k folders.

``fashion`` (Fashion-MNIST *test* images, in-domain), ``digits``
(scikit-learn's digits, cross-domain) and ``digits_rot`` (their rotation,
structured); see :mod:`mmdtl.datasets.mini_vtab`. Nothing is downloaded:
Fashion-MNIST comes from Debian's ``dataset-fashion-mnist``
(``tools/misc/install_fashion_mnist.sh``). ``tools/misc/transfer_demo.py``
calls the same writer, so this tool is only needed to look at the data first.

Example::

    python tools/misc/make_mini_vtab.py --root data/mini-vtab
"""
import argparse
import os.path as osp
import sys

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from mmdtl.datasets.mini_vtab import MINI_VTAB_TASKS, write_mini_vtab  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--root', default='data/mini-vtab', help='data root of the tasks')
    parser.add_argument('--fashion-mnist', dest='source',
                        help='folder with t10k-*-ubyte[.gz] (default: data/fashion-mnist, then '
                        '/usr/share/datasets/fashion-mnist)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the splits and rotations')
    args = parser.parse_args(argv)
    try:
        dirs = write_mini_vtab(args.root, args.source, seed=args.seed)
    except FileNotFoundError as e:
        raise SystemExit(str(e)) from e
    for task, task_dir in dirs.items():
        print(f'{task} ({MINI_VTAB_TASKS[task]} classes): {task_dir}')


if __name__ == '__main__':
    main()
