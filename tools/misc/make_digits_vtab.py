"""Write scikit-learn's bundled handwritten digits as a VTAB-1k task folder.

Nothing is downloaded. The result reads with
``dict(type='VTAB1k', data_root=<root>, task=<task>, num_classes=10)``, as in
``configs/dtl/vit-demo_digits.py``.
"""
import argparse

from mmdtl.datasets import write_digits_vtab


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Write sklearn digits as a VTAB-1k task folder (800/200/797 split).')
    parser.add_argument('--root', default='data/digits-vtab', help='VTAB-1k data root')
    parser.add_argument('--task', default='digits', help='task folder name')
    parser.add_argument('--image-size', type=int, default=32, help='side of the square images')
    parser.add_argument('--seed', type=int, default=0, help='seed of the stratified split')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    task_dir = write_digits_vtab(
        args.root, task=args.task, image_size=args.image_size, seed=args.seed)
    print(f'VTAB-1k task {args.task!r} (10 classes) is in {task_dir}')


if __name__ == '__main__':
    main()
