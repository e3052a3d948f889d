"""A miniature VTAB-1k from real images that ship in packages (no download).

Three tasks in the VTAB-1k folder format (``train800val200``, ``train800``,
``val200``, ``test``; read with :class:`VTAB1k` and ``num_classes``), from two
sources, grouped as in VTAB:

* natural

  - ``fashion``: Fashion-MNIST images from its *test* split (never seen by the
    demo backbone, which is pre-trained on the training split): the
    in-domain task;
  - ``digits``: scikit-learn's bundled handwritten digits (8x8, upscaled):
    cross-domain;

* structured

  - ``digits_rot``: the same digits, each rotated by 0, 90, 180 or 270
    degrees; the label is the rotation.

Images are 28x28 grey PNGs, the size the demo backbone is pre-trained at.
"""
import gzip
import os
import os.path as osp
import shutil
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import numpy as np

# task -> number of classes, in the order of the tables
MINI_VTAB_TASKS = OrderedDict([('fashion', 10), ('digits', 10), ('digits_rot', 4)])
MINI_VTAB_GROUPS = OrderedDict([('natural', ['fashion', 'digits']),
                                ('structured', ['digits_rot'])])

FASHION_MNIST_SYSTEM_DIR = '/usr/share/datasets/fashion-mnist'
FASHION_MNIST_FILES = ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte',
                       't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte')
FASHION_MNIST_HINT = (
    'On Debian/Ubuntu install it with `sudo apt-get install dataset-fashion-mnist` (files in '
    f'{FASHION_MNIST_SYSTEM_DIR}); elsewhere put the four files {", ".join(FASHION_MNIST_FILES)} '
    '(optionally .gz) from https://github.com/zalandoresearch/fashion-mnist into that folder '
    'or pass their folder explicitly.')

_NUM_TRAIN, _NUM_VAL = 800, 200
_NUM_FASHION_TEST = 2000
_SPLIT_FILES = ('train800val200', 'train800', 'val200', 'test')
_MARKER = 'mini_vtab.done'  # written last; its content keys the tree


def _atomic_bytes(path: str, data: bytes) -> None:
    tmp = f'{path}.{os.getpid()}.tmp'
    with open(tmp, 'wb') as f:
        f.write(data)
    os.replace(tmp, path)


def prepare_fashion_mnist(data_dir: str, source: Optional[str] = None) -> str:
    """Make ``data_dir`` hold the four uncompressed Fashion-MNIST IDX files.

    mmpretrain's :class:`FashionMNIST` dataset reads uncompressed files from
    its ``data_root``; Debian's ``dataset-fashion-mnist`` installs them
    gzipped. Missing files are taken from ``data_dir`` itself (``.gz``), then
    from ``source`` (default: :data:`FASHION_MNIST_SYSTEM_DIR`), and written
    atomically. Nothing is downloaded.

    Args:
        data_dir (str): Folder to hold the uncompressed files.
        source (str, optional): Folder with the (gzipped or plain) files.
            Defaults to None (the Debian package's folder).

    Returns:
        str: ``data_dir``.
    """
    source = source or FASHION_MNIST_SYSTEM_DIR
    os.makedirs(data_dir, exist_ok=True)
    for name in FASHION_MNIST_FILES:
        dst = osp.join(data_dir, name)
        if osp.isfile(dst):
            continue
        candidates = [osp.join(data_dir, name + '.gz'), osp.join(source, name + '.gz'),
                      osp.join(source, name)]
        src = next((c for c in candidates if osp.isfile(c)), None)
        if src is None:
            raise FileNotFoundError(
                f'Fashion-MNIST file {name} not found in {data_dir} or {source}. '
                f'{FASHION_MNIST_HINT}')
        tmp = f'{dst}.{os.getpid()}.tmp'
        opener = gzip.open if src.endswith('.gz') else open
        with opener(src, 'rb') as fin, open(tmp, 'wb') as fout:
            shutil.copyfileobj(fin, fout)
        os.replace(tmp, dst)
    return data_dir


def read_idx(path: str) -> np.ndarray:
    """An IDX file (``.gz`` or plain) of unsigned bytes as a numpy array."""
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'rb') as f:
        data = f.read()
    if len(data) < 4 or data[:2] != b'\x00\x00' or data[2] != 0x08:
        raise ValueError(f'{path} is not an IDX file of unsigned bytes (magic {data[:4]!r}).')
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(shape)):
        raise ValueError(f'{path}: header says shape {shape}, but the file holds '
                         f'{len(data) - offset} values (truncated download?).')
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def write_idx(path: str, array: np.ndarray) -> None:
    """Write ``array`` as an IDX file of unsigned bytes (the MNIST format
    :func:`read_idx` and mmpretrain's MNIST datasets read), gzipped if
    ``path`` ends with ``.gz``; atomically."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    if not 1 <= array.ndim <= 255:
        raise ValueError(f'write_idx: cannot write a {array.ndim}-d array.')
    header = b'\x00\x00\x08' + bytes([array.ndim]) + b''.join(
        int(d).to_bytes(4, 'big') for d in array.shape)
    data = header + array.tobytes()
    _atomic_bytes(path, gzip.compress(data) if path.endswith('.gz') else data)


def load_fashion_mnist_test(source: Optional[str] = None) -> Tuple[np.ndarray, np.ndarray]:
    """The 10,000 Fashion-MNIST test images (28x28 uint8) and labels."""
    folders = [source] if source else ['data/fashion-mnist', FASHION_MNIST_SYSTEM_DIR]
    arrays = []
    for name in ('t10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'):
        found = [osp.join(d, name + ext) for d in folders for ext in ('', '.gz')
                 if osp.isfile(osp.join(d, name + ext))]
        if not found:
            raise FileNotFoundError(
                f'Fashion-MNIST file {name}[.gz] not found in {" or ".join(folders)}. '
                f'{FASHION_MNIST_HINT}')
        arrays.append(read_idx(found[0]))
    images, labels = arrays
    if images.shape[1:] != (28, 28) or len(images) != len(labels):
        raise ValueError(f'Fashion-MNIST test files in {osp.dirname(found[0])}: images '
                         f'{images.shape} and labels {labels.shape} do not match.')
    return images, labels.astype(np.int64)


def _stratified(labels: np.ndarray, sizes: List[int], seed: int) -> List[np.ndarray]:
    """Disjoint stratified index sets of the given sizes (the rest unused)."""
    from sklearn.model_selection import train_test_split

    rest = np.arange(len(labels))
    parts = []
    for size in sizes:
        if size == len(rest):
            parts.append(np.sort(rest))
            break
        part, rest = train_test_split(rest, train_size=size, stratify=labels[rest],
                                      random_state=seed)
        parts.append(np.sort(part))
    return parts


def _write_task(task_dir: str, images: np.ndarray, labels: np.ndarray,
                splits: Dict[str, np.ndarray]) -> None:
    """PNG per image, then the split files (``<relpath> <label>``)."""
    from PIL import Image

    os.makedirs(osp.join(task_dir, 'images'), exist_ok=True)
    used = np.unique(np.concatenate(list(splits.values())))
    for i in used:
        path = osp.join(task_dir, 'images', f'{i:05d}.png')
        tmp = f'{path}.{os.getpid()}.tmp'
        Image.fromarray(images[i]).save(tmp, format='PNG')
        os.replace(tmp, path)
    for split, index in splits.items():
        text = ''.join(f'images/{i:05d}.png {labels[i]}\n' for i in index)
        _atomic_bytes(osp.join(task_dir, f'{split}.txt'), text.encode())


def _vtab_splits(train: np.ndarray, val: np.ndarray, test: np.ndarray) -> Dict[str, np.ndarray]:
    return OrderedDict(train800val200=np.concatenate([train, val]), train800=train, val200=val,
                       test=test)


def _digits_images(image_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1797 digits as ``image_size``² uint8 images (bicubic)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    out = []
    for image in digits.images:
        grey = np.clip(np.round(image * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        out.append(np.asarray(Image.fromarray(grey).resize(
            (image_size, image_size), Image.Resampling.BICUBIC)))
    return np.stack(out), digits.target.astype(np.int64)


def write_mini_vtab(root: str, fashion_source: Optional[str] = None, seed: int = 0,
                    image_size: int = 28) -> Dict[str, str]:
    """Write the mini VTAB-1k (:data:`MINI_VTAB_TASKS`) under ``root``.

    Each task gets 800 ``train800`` and 200 ``val200`` images (stratified;
    together ``train800val200``) and a disjoint ``test`` split: 2,000 images
    of the Fashion-MNIST test split for ``fashion``, the other 797 digits for
    ``digits`` and ``digits_rot``. ``digits_rot`` uses the same image split as
    ``digits``, so no test digit is seen in training in any rotation; each
    image gets one rotation, drawn uniformly with ``seed``.

    Idempotent: a tree written with the same ``seed`` and ``image_size`` is
    kept (a marker file written last records them); anything else is
    rewritten.

    Args:
        root (str): Folder to hold one sub-folder per task.
        fashion_source (str, optional): Folder with the Fashion-MNIST test
            files (``t10k-*-ubyte[.gz]``). Defaults to None: ``data/fashion-mnist``,
            then Debian's :data:`FASHION_MNIST_SYSTEM_DIR`.
        seed (int): Seed of the splits and rotations. Defaults to 0.
        image_size (int): Side of the images. Defaults to 28.

    Returns:
        dict: task -> task folder.
    """
    if int(image_size) < 8:
        raise ValueError(f'write_mini_vtab: image_size must be >= 8, got {image_size}.')
    key = f'seed={seed} image_size={image_size}\n'
    dirs = OrderedDict((task, osp.join(root, task)) for task in MINI_VTAB_TASKS)
    marker = osp.join(root, _MARKER)
    complete = all(osp.isfile(osp.join(d, f'{s}.txt')) for d in dirs.values()
                   for s in _SPLIT_FILES)
    if complete and osp.isfile(marker):
        with open(marker, encoding='utf-8') as f:
            if f.read() == key:
                return dirs
    os.makedirs(root, exist_ok=True)
    if osp.isfile(marker):
        os.remove(marker)
    for task_dir in dirs.values():  # no stale images of another seed
        shutil.rmtree(task_dir, ignore_errors=True)

    from PIL import Image

    images, labels = load_fashion_mnist_test(fashion_source)
    if image_size != 28:
        images = np.stack([np.asarray(Image.fromarray(im).resize(
            (image_size, image_size), Image.Resampling.BICUBIC)) for im in images])
    train, val, test = _stratified(labels, [_NUM_TRAIN, _NUM_VAL, _NUM_FASHION_TEST], seed)
    _write_task(dirs['fashion'], images, labels, _vtab_splits(train, val, test))

    images, labels = _digits_images(image_size)
    train, val, test = _stratified(labels, [_NUM_TRAIN, _NUM_VAL, len(labels) - 1000], seed)
    _write_task(dirs['digits'], images, labels, _vtab_splits(train, val, test))

    turns = np.random.default_rng(seed).integers(0, 4, size=len(images))
    rotated = np.stack([np.rot90(im, k) for im, k in zip(images, turns)])
    _write_task(dirs['digits_rot'], np.ascontiguousarray(rotated), turns.astype(np.int64),
                _vtab_splits(train, val, test))
    _atomic_bytes(marker, key.encode())
    return dirs
