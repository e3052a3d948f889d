"""Write scikit-learn's bundled digits as a VTAB-1k task folder (no download)."""
import os
import os.path as osp
from typing import Dict, List, Tuple

import numpy as np

# Same sizes as a real VTAB-1k task; the other 797 of the 1797 digits are test.
_NUM_TRAIN, _NUM_VAL = 800, 200
_NUM_IMAGES = 1797


def _atomic_write_text(path: str, text: str) -> None:
    # A reader (or a second process writing the same tree) never sees a
    # half-written split file.
    tmp = f'{path}.{os.getpid()}.tmp'
    with open(tmp, 'w', encoding='utf-8') as f:
        f.write(text)
    os.replace(tmp, path)


def _expected_counts() -> Dict[str, int]:
    return dict(
        train800val200=_NUM_TRAIN + _NUM_VAL,
        train800=_NUM_TRAIN,
        val200=_NUM_VAL,
        test=_NUM_IMAGES - _NUM_TRAIN - _NUM_VAL)


def _is_complete(task_dir: str, image_size: int) -> bool:
    """Whether all split files are there with the right number of existing
    images of the requested size."""
    from PIL import Image

    first = None
    for split, count in _expected_counts().items():
        path = osp.join(task_dir, f'{split}.txt')
        if not osp.isfile(path):
            return False
        with open(path, encoding='utf-8') as f:
            lines = [line.rsplit(maxsplit=1) for line in f if line.strip()]
        if len(lines) != count:
            return False
        for parts in lines:
            if len(parts) != 2 or not osp.isfile(osp.join(task_dir, parts[0])):
                return False
        first = first or osp.join(task_dir, lines[0][0])
    # A tree written with another image_size is rewritten, not silently reused.
    with Image.open(first) as img:
        return img.size == (image_size, image_size)


def _stratified_splits(labels: np.ndarray, seed: int) -> Tuple[np.ndarray, ...]:
    from sklearn.model_selection import train_test_split

    index = np.arange(len(labels))
    trainval, test = train_test_split(
        index, train_size=_NUM_TRAIN + _NUM_VAL, stratify=labels, random_state=seed)
    train, val = train_test_split(
        trainval, train_size=_NUM_TRAIN, stratify=labels[trainval], random_state=seed)
    return train, val, test


def write_digits_vtab(root: str, task: str = 'digits', image_size: int = 32, seed: int = 0) -> str:
    """Write scikit-learn's handwritten digits as a VTAB-1k task folder.

    The 1797 8x8 grey images bundled with scikit-learn
    (:func:`sklearn.datasets.load_digits`, nothing is downloaded) are upscaled
    (bicubic) to ``image_size`` and saved as RGB PNGs under
    ``<root>/<task>/images/``. A stratified shuffle puts 800 images in
    ``train800.txt`` and 200 in ``val200.txt`` (both together in
    ``train800val200.txt``) and the remaining 797 in ``test.txt``, so the
    folder reads with ``VTAB1k(root, task, num_classes=10)``.

    The call is idempotent: if the folder already holds complete split files
    (with images of ``image_size``), nothing is rewritten.

    Args:
        root (str): The VTAB-1k data root to write the task folder into.
        task (str): Name of the task folder. Defaults to ``'digits'``.
        image_size (int): Side of the square output images. Defaults to 32.
        seed (int): Seed of the stratified shuffle. Defaults to 0.

    Returns:
        str: The task folder path.
    """
    from PIL import Image
    from sklearn.datasets import load_digits

    if int(image_size) < 1:
        raise ValueError(f'write_digits_vtab: image_size must be >= 1, got {image_size}.')
    task_dir = osp.join(root, task)
    if _is_complete(task_dir, image_size):
        return task_dir

    digits = load_digits()
    images, labels = digits.images, digits.target.astype(np.int64)
    assert len(images) == _NUM_IMAGES, f'unexpected number of digits: {len(images)}'

    img_dir = osp.join(task_dir, 'images')
    os.makedirs(img_dir, exist_ok=True)
    relpaths: List[str] = []
    for i, image in enumerate(images):
        # load_digits gives grey levels 0..16.
        grey = np.clip(np.round(image * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        img = Image.fromarray(grey).resize((image_size, image_size),
                                                     Image.Resampling.BICUBIC).convert('RGB')
        relpath = f'images/{i:04d}.png'
        path = osp.join(task_dir, relpath)
        tmp = f'{path}.{os.getpid()}.tmp'
        img.save(tmp, format='PNG')
        os.replace(tmp, path)
        relpaths.append(relpath)

    train, val, test = _stratified_splits(labels, seed)

    def lines(index: np.ndarray) -> str:
        return ''.join(f'{relpaths[i]} {labels[i]}\n' for i in index)

    # Split files last: their presence marks the folder complete.
    _atomic_write_text(osp.join(task_dir, 'train800.txt'), lines(train))
    _atomic_write_text(osp.join(task_dir, 'val200.txt'), lines(val))
    _atomic_write_text(osp.join(task_dir, 'test.txt'), lines(test))
    _atomic_write_text(
        osp.join(task_dir, 'train800val200.txt'), lines(np.concatenate([train, val])))
    return task_dir
