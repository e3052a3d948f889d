"""Write the dense mini-benchmark's scenes (mmdet COCO files + mmseg folders).

Grey 112x112 scenes of 1-6 real objects (Fashion-MNIST *test* items and
scikit-learn digits) on varied dark backgrounds, with exact boxes, instance
masks and label maps; see :mod:`mmdtl.datasets.dense_scenes` and
docs/dense_benchmark.md. Deterministic (same options, same bytes), no
download: Fashion-MNIST comes from Debian's ``dataset-fashion-mnist``
(``tools/misc/install_fashion_mnist.sh``).

Example::

    python tools/misc/make_dense_scenes.py --out-dir data/dense-scenes
"""
import argparse
import os.path as osp
import sys
import time

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

from mmdtl.datasets.dense_scenes import DenseScenesError, write_dense_scenes  # noqa: E402


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out-dir', default='data/dense-scenes', help='output folder')
    parser.add_argument('--num-train', type=int, default=1000, help='train scenes')
    parser.add_argument('--num-val', type=int, default=200, help='validation scenes (lr choice)')
    parser.add_argument('--num-test', type=int, default=500, help='test scenes')
    parser.add_argument('--seed', type=int, default=0, help='seed of pools, scenes, backgrounds')
    parser.add_argument('--size', type=int, default=112, help='side of the square scenes (px)')
    parser.add_argument('--object-size', type=int, nargs=2, default=[20, 56],
                        metavar=('MIN', 'MAX'), help='range of object sides (px)')
    parser.add_argument('--max-objects', type=int, default=6, help='most objects per scene')
    parser.add_argument('--min-area', type=int, default=40,
                        help='fewest visible pixels of an object (placements that would leave '
                        'less are redrawn)')
    parser.add_argument('--max-occlusion', type=float, default=0.3,
                        help='largest fraction of an object later objects may cover')
    parser.add_argument('--fashion-mnist', dest='source',
                        help='folder with t10k-*-ubyte[.gz] (default: data/fashion-mnist, then '
                        '/usr/share/datasets/fashion-mnist)')
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        meta = write_dense_scenes(
            args.out_dir, num_train=args.num_train, num_val=args.num_val,
            num_test=args.num_test, seed=args.seed, size=args.size,
            object_size=args.object_size, max_objects=args.max_objects,
            min_area=args.min_area, max_occlusion=args.max_occlusion, fashion_source=args.source)
    except (FileNotFoundError, DenseScenesError, ValueError) as e:
        raise SystemExit(f'make_dense_scenes: {e}') from e
    splits = ', '.join(f'{split} {s["scenes"]} scenes / {s["instances"]} objects'
                       for split, s in meta['splits'].items())
    print(f'Wrote {args.out_dir}: {splits}; {args.size}x{args.size} px, '
          f'{len(meta["classes"])} classes, seed {args.seed}, in '
          f'{time.perf_counter() - start:.1f} s.')


if __name__ == '__main__':
    main()
