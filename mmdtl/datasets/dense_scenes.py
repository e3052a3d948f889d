"""The dense mini-benchmark's scenes: real object images composed into small
grey scenes with exact boxes, instance masks and semantic maps.

Objects are Fashion-MNIST *test-split* items (the demo backbone in
``checkpoints/demo/`` was pre-trained on the training split only) and
scikit-learn's bundled digits (8x8, upscaled). Nothing is downloaded. One call
of :func:`write_dense_scenes` writes, under one folder::

    <out_dir>/
    ├── img_dir/{train,val,test}/<split>_<5 digits>.png   grey scenes (mode L)
    ├── ann_dir/{train,val,test}/<split>_<5 digits>.png   label maps (mode L)
    ├── annotations/instances_{train,val,test}.json       COCO instances
    └── meta.json                                         classes, counts, seed, sha256s

The images are shared: mmdet reads them through the COCO files
(``data_prefix=dict(img='img_dir/<split>/')``), mmseg through its folder
layout (``img_dir/<split>`` + ``ann_dir/<split>``).

Labels: COCO category ids 1..20 follow :data:`DENSE_SCENES_CLASSES`; the label
maps hold the same numbers, 0 for background (:data:`DENSE_SCENES_SEG_CLASSES`,
``reduce_zero_label=False``); 255 (mmseg's ``ignore_index``) is never written,
every pixel is exact.

This module needs only numpy and PIL (plus scikit-learn for the digits); the
mmdet / mmseg dataset classes that read the folder live in
:mod:`mmdtl.datasets.dense_scenes_datasets` and call the checks defined here.
"""
import colorsys
import hashlib
import json
import os
import os.path as osp
import shutil
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..utils.checkpoint import file_sha256

FASHION_CLASSES = ('tshirt', 'trouser', 'pullover', 'dress', 'coat', 'sandal', 'shirt',
                   'sneaker', 'bag', 'ankle_boot')
DIGIT_CLASSES = tuple(f'digit{i}' for i in range(10))
# Object classes, in COCO category-id order (id = index + 1 = label-map value).
DENSE_SCENES_CLASSES = FASHION_CLASSES + DIGIT_CLASSES
# mmseg's classes: label-map value = index.
DENSE_SCENES_SEG_CLASSES = ('background', ) + DENSE_SCENES_CLASSES
# One colour per mmseg class; background black, the objects evenly spaced hues.
DENSE_SCENES_PALETTE = [(0, 0, 0)] + [
    tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(i / 20, 0.75 if i % 2 else 1.0, 1.0))
    for i in range(20)
]
DENSE_SCENES_SPLITS = ('train', 'val', 'test')
SOURCES = ('fashion-mnist-test', 'digits')

# Every background pixel is <= BACKGROUND_MAX and every object pixel above it.
BACKGROUND_MAX = 64
# An object's mask: its own resized intensity above this fraction of its maximum.
MASK_THRESHOLD = 0.2
# Fractions of every source's items (per class) that feed each split; disjoint.
POOL_FRACTIONS = OrderedDict([('train', 0.6), ('val', 0.1), ('test', 0.3)])
GENERATOR_VERSION = 1
COMMAND = 'python tools/misc/make_dense_scenes.py'


class DenseScenesError(ValueError):
    """Scene files that do not match each other (or are not there)."""


# --------------------------------------------------------------------------- sources
def load_sources(fashion_source: Optional[str] = None) -> Dict[str, Tuple[np.ndarray, ...]]:
    """Object images (float32 in [0, 1]) and labels of both sources.

    Args:
        fashion_source (str, optional): Folder with ``t10k-*-ubyte[.gz]``.
            Defaults to None: ``data/fashion-mnist``, then Debian's
            ``/usr/share/datasets/fashion-mnist`` (``tools/misc/install_fashion_mnist.sh``).

    Returns:
        dict: source name -> (images ``N x h x w``, labels ``N``); labels are
        class indices into :data:`DENSE_SCENES_CLASSES`.
    """
    from sklearn.datasets import load_digits

    from .mini_vtab import load_fashion_mnist_test

    images, labels = load_fashion_mnist_test(fashion_source)
    digits = load_digits()
    return OrderedDict([
        ('fashion-mnist-test', (images.astype(np.float32) / 255.0, labels)),
        # load_digits gives grey levels 0..16
        ('digits', (digits.images.astype(np.float32) / 16.0,
                    digits.target.astype(np.int64) + len(FASHION_CLASSES))),
    ])


def source_pools(labels: Dict[str, np.ndarray], seed: int) -> Dict[str, Dict[str, np.ndarray]]:
    """Split every source's items into disjoint per-split pools, per class.

    Each class of each source is shuffled with ``seed`` and cut by
    :data:`POOL_FRACTIONS`, so no item feeds two splits.

    Args:
        labels (dict): source name -> class index of every item.
        seed (int): Seed of the shuffle.

    Returns:
        dict: split -> source -> sorted item indices.
    """
    rng = np.random.default_rng([seed, 1000])
    pools = {split: {} for split in POOL_FRACTIONS}
    for source, source_labels in labels.items():
        parts = {split: [] for split in POOL_FRACTIONS}
        for cls in np.unique(source_labels):
            items = rng.permutation(np.flatnonzero(source_labels == cls))
            cuts = np.round(np.cumsum(list(POOL_FRACTIONS.values())) * len(items)).astype(int)
            for split, part in zip(POOL_FRACTIONS, np.split(items, cuts[:-1])):
                parts[split].append(part)
        for split in POOL_FRACTIONS:
            pools[split][source] = np.sort(np.concatenate(parts[split]))
    return pools


# --------------------------------------------------------------------------- scenes
def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A dark, low-contrast background: level + gradient + smooth noise +
    faint stripes (each part drawn from ``rng``), within [0, BACKGROUND_MAX]."""
    from PIL import Image

    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * xx + np.sin(angle) * yy
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    cells = int(rng.integers(2, 9))
    noise = np.asarray(Image.fromarray(rng.random((cells, cells)).astype(np.float32)).resize(
        (size, size), Image.Resampling.BICUBIC))
    cycles, phase, stripe_angle = rng.uniform(2, 10), rng.uniform(0, 2 * np.pi), \
        rng.uniform(0, np.pi)
    stripes = np.sin(2 * np.pi * cycles * (np.cos(stripe_angle) * xx + np.sin(stripe_angle) * yy)
                     + phase)
    level, grad, bumps = rng.uniform(0, 24), rng.uniform(0, 24), rng.uniform(0, 20)
    stripe = rng.uniform(2, 8) if rng.random() < 0.5 else 0.0
    bg = level + grad * ramp + bumps * noise + stripe * stripes
    return np.clip(np.round(bg), 0, BACKGROUND_MAX).astype(np.uint8)


def render_object(image: np.ndarray, side: int) -> np.ndarray:
    """An object image resized (bicubic) to ``side`` x ``side``, scaled so its
    maximum is 1 (float32, >= 0); its mask is ``> MASK_THRESHOLD``."""
    from PIL import Image

    resized = np.asarray(Image.fromarray(np.ascontiguousarray(image, np.float32)).resize(
        (side, side), Image.Resampling.BICUBIC))
    resized = np.clip(resized, 0, None)
    peak = float(resized.max())
    return resized / peak if peak > 0 else resized


def class_items(sources: Dict[str, Tuple[np.ndarray, ...]],
                pools: Dict[str, np.ndarray]) -> Dict[int, List[Tuple[str, int]]]:
    """class index -> the ``(source, item)`` pairs of a split's pools."""
    by_class: Dict[int, List[Tuple[str, int]]] = {}
    for source, (_, labels) in sources.items():
        for item in pools[source]:
            by_class.setdefault(int(labels[item]), []).append((source, int(item)))
    return dict(sorted(by_class.items()))


def compose_scene(rng: np.random.Generator, size: int, sources: Dict[str, Tuple[np.ndarray, ...]],
                  by_class: Dict[int, List[Tuple[str, int]]],
                  object_size: Tuple[int, int] = (20, 56), max_objects: int = 6,
                  min_area: int = 40, max_occlusion: float = 0.3,
                  tries: int = 20) -> Tuple[np.ndarray, np.ndarray, List[dict]]:
    """Compose one scene.

    The scene gets a target of 1..``max_objects`` objects (uniform). For each,
    a class is drawn uniformly over the 20 classes, then an item of that class
    from the split's pool, a side in ``object_size`` and a position that keeps
    the object inside the image. Its mask is its own resized intensity above
    :data:`MASK_THRESHOLD` of its maximum; its pixels
    (``BACKGROUND_MAX + 1 + (254 - BACKGROUND_MAX) * gain * intensity``, gain
    in [0.6, 1]) replace what was there, so a later object occludes an
    earlier one. A placement is rejected (and redrawn, up to ``tries`` times,
    then the object is skipped) if the object's own mask has fewer than
    ``min_area`` pixels, or if it would leave an earlier instance with fewer
    than ``max(min_area, (1 - max_occlusion) * its full area)`` visible pixels.
    Instances that would fall below the minimum are therefore never painted,
    and every painted pixel belongs to an annotated instance.

    Args:
        rng (numpy.random.Generator): All randomness of the scene.
        size (int): Side of the square scene.
        sources (dict): From :func:`load_sources`.
        by_class (dict): The items this split may use, from :func:`class_items`.
        object_size (tuple[int, int]): Smallest and largest object side.
            Defaults to (20, 56).
        max_objects (int): Most objects per scene. Defaults to 6.
        min_area (int): Fewest visible pixels of an instance. Defaults to 40.
        max_occlusion (float): Largest fraction of an instance that later
            objects may cover. Defaults to 0.3.
        tries (int): Placements drawn per object. Defaults to 20.

    Returns:
        tuple: the image (uint8, ``size x size``), the owner map (int32,
        index of the instance visible at each pixel, -1 for background) and
        one dict per instance (``label`` = class index, ``source``,
        ``source_index``, ``side``, ``full_area``).
    """
    classes = sorted(by_class)

    image = _background(rng, size)
    owner = np.full((size, size), -1, dtype=np.int32)
    instances: List[dict] = []
    visible = np.zeros(0, dtype=np.int64)
    target = int(rng.integers(1, max_objects + 1))
    for k in range(target):
        # The first object always finds room; give it more tries so no scene is empty.
        for _ in range(tries if k else tries * 50):
            label = classes[int(rng.integers(len(classes)))]
            source, item = by_class[label][int(rng.integers(len(by_class[label])))]
            side = int(rng.integers(object_size[0], object_size[1] + 1))
            y, x = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            gain = float(rng.uniform(0.6, 1.0))
            intensity = render_object(sources[source][0][item], side)
            mask = intensity > MASK_THRESHOLD
            area = int(mask.sum())
            if area < min_area:
                continue
            region = owner[y:y + side, x:x + side]
            hit = region[mask]
            covered = np.bincount(hit[hit >= 0], minlength=len(instances))
            keep = np.array([max(min_area, (1 - max_occlusion) * inst['full_area'])
                             for inst in instances])
            if len(instances) and np.any(visible - covered < keep):
                continue
            pixels = BACKGROUND_MAX + 1 + np.round(
                (254 - BACKGROUND_MAX) * gain * intensity[mask])
            image[y:y + side, x:x + side][mask] = pixels.astype(np.uint8)
            region[mask] = len(instances)
            visible = np.append(visible - covered, area)
            instances.append(dict(label=label, source=source, source_index=item, side=side,
                                  full_area=area))
            break
    return image, owner, instances


# --------------------------------------------------------------------------- masks
def mask_to_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE of a binary mask (column-major runs, zeros first).

    Args:
        mask (numpy.ndarray): ``h x w`` bool.

    Returns:
        dict: ``{'size': [h, w], 'counts': [int, ...]}``.
    """
    flat = np.asarray(mask, dtype=bool).ravel(order='F')
    bounds = np.concatenate([[0], np.flatnonzero(flat[1:] != flat[:-1]) + 1, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {'size': [int(mask.shape[0]), int(mask.shape[1])], 'counts': counts}


def rle_to_mask(rle: dict) -> np.ndarray:
    """Decode an RLE (uncompressed, or compressed through pycocotools).

    Args:
        rle (dict): ``{'size': [h, w], 'counts': list | str}``.

    Returns:
        numpy.ndarray: ``h x w`` bool.
    """
    h, w = (int(v) for v in rle['size'])
    counts = rle['counts']
    if isinstance(counts, (str, bytes)):
        from pycocotools import mask as mask_utils
        return mask_utils.decode(dict(size=[h, w], counts=counts)).astype(bool)
    counts = np.asarray(counts, dtype=np.int64)
    values = np.arange(len(counts)) % 2 == 1
    return np.repeat(values, counts).reshape((h, w), order='F')


def tight_box(mask: np.ndarray) -> List[int]:
    """COCO ``[x, y, w, h]`` of the pixels of a non-empty mask (pixel edges:
    a single pixel at column c, row r is ``[c, r, 1, 1]``)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return [int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1),
            int(rows[-1] - rows[0] + 1)]


# --------------------------------------------------------------------------- writer
def _folder_digest(folder: str) -> str:
    """sha256 over ``<name> <sha256>`` lines of a folder's files, sorted."""
    lines = ''.join(f'{name} {file_sha256(osp.join(folder, name))}\n'
                    for name in sorted(os.listdir(folder)))
    return hashlib.sha256(lines.encode()).hexdigest()


def _check_args(num_scenes: Dict[str, int], size: int, object_size: Sequence[int],
                max_objects: int, min_area: int, max_occlusion: float) -> None:
    for split, n in num_scenes.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f'write_dense_scenes: num_{split} (--num-{split}) must be a '
                             f'positive int, got {n!r}.')
    lo, hi = (int(v) for v in object_size)
    if not 8 <= lo <= hi:
        raise ValueError(f'write_dense_scenes: object_size (--object-size) must be MIN MAX with '
                         f'8 <= MIN <= MAX, got {tuple(object_size)}.')
    if hi > size:
        raise ValueError(f'write_dense_scenes: the largest object ({hi} px, --object-size) '
                         f'does not fit in a {size} px scene (--size).')
    if not 1 <= max_objects <= 50:
        raise ValueError(f'write_dense_scenes: max_objects (--max-objects) must be in 1..50, '
                         f'got {max_objects}.')
    if min_area < 1 or not 0 <= max_occlusion < 1:
        raise ValueError(f'write_dense_scenes: need min_area >= 1 and 0 <= max_occlusion < 1, '
                         f'got {min_area} and {max_occlusion}.')


def _prepare_out_dir(out_dir: str) -> str:
    """A fresh sibling folder to write into; refuses to replace a folder
    this tool did not write."""
    if osp.exists(out_dir):
        if not osp.isdir(out_dir):
            raise DenseScenesError(f'--out-dir {out_dir} exists and is not a folder.')
        if os.listdir(out_dir) and not osp.isfile(osp.join(out_dir, 'meta.json')):
            raise DenseScenesError(
                f'--out-dir {out_dir} is not empty and holds no meta.json of this tool; '
                'refusing to replace it. Pass another --out-dir or empty the folder.')
    tmp = f'{osp.abspath(out_dir).rstrip(os.sep)}.tmp-{os.getpid()}'
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    return tmp


def write_dense_scenes(out_dir: str = 'data/dense-scenes',
                       num_train: int = 1000,
                       num_val: int = 200,
                       num_test: int = 500,
                       seed: int = 0,
                       size: int = 112,
                       object_size: Sequence[int] = (20, 56),
                       max_objects: int = 6,
                       min_area: int = 40,
                       max_occlusion: float = 0.3,
                       fashion_source: Optional[str] = None) -> dict:
    """Write the dense mini-benchmark's scenes (see the module docstring).

    Deterministic: the same arguments give byte-identical files (every split
    draws from its own generator seeded with ``(seed, split)``, so changing
    one split's count leaves the others as they were). Objects of each split
    come from that split's disjoint pool of source items
    (:func:`source_pools`). The folder is written next to ``out_dir`` and
    then moved in its place, replacing an earlier output of this function
    (never a folder without its ``meta.json``).

    Args:
        out_dir (str): Output folder. Defaults to ``'data/dense-scenes'``.
        num_train (int): Train scenes. Defaults to 1000.
        num_val (int): Validation scenes (for the lr choice). Defaults to 200.
        num_test (int): Test scenes. Defaults to 500.
        seed (int): Seed of pools, scenes and backgrounds. Defaults to 0.
        size (int): Side of the square scenes in pixels. Defaults to 112
            (a 16x16 grid of the demo ViT's 7 px patches).
        object_size (Sequence[int]): Smallest and largest object side.
            Defaults to (20, 56).
        max_objects (int): Most objects per scene (at least 1). Defaults to 6.
        min_area (int): Fewest visible pixels of an instance. Defaults to 40.
        max_occlusion (float): Largest covered fraction of an instance.
            Defaults to 0.3.
        fashion_source (str, optional): Folder with the Fashion-MNIST test
            files. Defaults to None (``data/fashion-mnist``, then Debian's folder).

    Returns:
        dict: The content of ``meta.json``.
    """
    from PIL import Image

    num_scenes = OrderedDict(train=num_train, val=num_val, test=num_test)
    _check_args(num_scenes, size, object_size, max_objects, min_area, max_occlusion)
    object_size = (int(object_size[0]), int(object_size[1]))
    sources = load_sources(fashion_source)
    pools = source_pools({name: labels for name, (_, labels) in sources.items()}, seed)
    tmp = _prepare_out_dir(out_dir)
    categories = [dict(id=i + 1, name=name, supercategory='fashion' if i < 10 else 'digit')
                  for i, name in enumerate(DENSE_SCENES_CLASSES)]
    meta = OrderedDict(
        generator=f'mmdtl.datasets.dense_scenes v{GENERATOR_VERSION}',
        # Without --out-dir, so that the file does not depend on where it is.
        options=f'--seed {seed} --size {size} --num-train {num_train} --num-val {num_val} '
        f'--num-test {num_test} --object-size {object_size[0]} {object_size[1]} '
        f'--max-objects {max_objects} --min-area {min_area} --max-occlusion {max_occlusion}',
        seed=seed, size=size, object_size=list(object_size), max_objects=max_objects,
        min_area=min_area, max_occlusion=max_occlusion, mask_threshold=MASK_THRESHOLD,
        background_max=BACKGROUND_MAX, classes=list(DENSE_SCENES_CLASSES),
        seg_classes=list(DENSE_SCENES_SEG_CLASSES),
        label_convention='COCO category_id = label-map value = 1 + index in classes; '
        'label-map 0 = background; 255 is never written',
        pools={split: {s: len(v) for s, v in p.items()} for split, p in pools.items()},
        splits=OrderedDict(), sha256=OrderedDict())
    try:
        for split_no, (split, count) in enumerate(num_scenes.items()):
            rng = np.random.default_rng([seed, split_no])
            by_class = class_items(sources, pools[split])
            img_dir = osp.join(tmp, 'img_dir', split)
            ann_dir = osp.join(tmp, 'ann_dir', split)
            os.makedirs(img_dir)
            os.makedirs(ann_dir)
            images, annotations = [], []
            per_class = np.zeros(len(DENSE_SCENES_CLASSES), dtype=np.int64)
            per_scene = np.zeros(max_objects + 1, dtype=np.int64)
            for i in range(count):
                image, owner, instances = compose_scene(
                    rng, size, sources, by_class, object_size, max_objects, min_area,
                    max_occlusion)
                name = f'{split}_{i:05d}.png'
                Image.fromarray(image).save(osp.join(img_dir, name))
                labels = np.array([inst['label'] + 1 for inst in instances] + [0], np.uint8)
                Image.fromarray(labels[owner]).save(osp.join(ann_dir, name))
                images.append(dict(id=i + 1, file_name=name, width=size, height=size))
                for k, inst in enumerate(instances):
                    mask = owner == k
                    annotations.append(dict(
                        id=len(annotations) + 1, image_id=i + 1,
                        category_id=inst['label'] + 1, bbox=tight_box(mask),
                        area=int(mask.sum()), iscrowd=0, segmentation=mask_to_rle(mask),
                        source=inst['source'], source_index=inst['source_index']))
                    per_class[inst['label']] += 1
                per_scene[len(instances)] += 1
            coco = OrderedDict(
                info=dict(description=f'mmdtl dense scenes, {split} split', version=str(
                    GENERATOR_VERSION)),
                images=images, annotations=annotations, categories=categories)
            ann_name = f'annotations/instances_{split}.json'
            os.makedirs(osp.join(tmp, 'annotations'), exist_ok=True)
            with open(osp.join(tmp, ann_name), 'w', encoding='utf-8') as f:
                json.dump(coco, f, separators=(',', ':'))
            meta['splits'][split] = OrderedDict(
                scenes=count, instances=len(annotations),
                objects_per_scene={str(n): int(c) for n, c in enumerate(per_scene) if n},
                instances_per_class=dict(zip(DENSE_SCENES_CLASSES, per_class.tolist())))
            meta['sha256'][ann_name] = file_sha256(osp.join(tmp, ann_name))
            meta['sha256'][f'ann_dir/{split}'] = _folder_digest(ann_dir)
            meta['sha256'][f'img_dir/{split}'] = _folder_digest(img_dir)
        with open(osp.join(tmp, 'meta.json'), 'w', encoding='utf-8') as f:
            json.dump(meta, f, indent=1)
            f.write('\n')
        if osp.isdir(out_dir):
            shutil.rmtree(out_dir)
        os.makedirs(osp.dirname(osp.abspath(out_dir)), exist_ok=True)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


# --------------------------------------------------------------------------- checks
def regenerate_hint(root: Optional[str]) -> str:
    """The command that rewrites a scene folder (with its meta.json's options)."""
    options = ''
    if root and osp.isfile(osp.join(root, 'meta.json')):
        try:
            with open(osp.join(root, 'meta.json'), encoding='utf-8') as f:
                options = json.load(f).get('options') or ''
        except (OSError, ValueError, AttributeError):
            options = ''
    command = f'{COMMAND} --out-dir {root or "<data_root>"} {options}'.rstrip()
    return f'Regenerate the scenes with `{command}` (files edited or mixed from two runs).'


def _image_size(path: str) -> Tuple[int, int]:
    from PIL import Image
    with Image.open(path) as img:
        return img.size


def check_coco_scenes(ann_file: str, img_dir: str) -> List[str]:
    """Check a dense-scenes COCO file against its images.

    Every image must exist with the width and height the file says; every
    annotation must name a known image and one of the 20 categories, carry an
    RLE mask of its image's size, a ``bbox`` inside the image that is the
    tight box of that mask and an ``area`` equal to its pixel count.

    Args:
        ann_file (str): ``annotations/instances_<split>.json``.
        img_dir (str): The folder its ``file_name`` s are relative to.

    Returns:
        list[str]: One line per problem, naming the file and the image or
        annotation id; empty when all is well.
    """
    if not osp.isfile(ann_file):
        return [f'{ann_file}: annotation file does not exist.']
    try:
        with open(ann_file, encoding='utf-8') as f:
            coco = json.load(f)
    except ValueError as e:
        return [f'{ann_file}: not valid JSON ({e}).']
    missing = [k for k in ('images', 'annotations', 'categories') if not isinstance(
        coco.get(k) if isinstance(coco, dict) else None, list)]
    if missing:
        return [f'{ann_file}: not a COCO instances file (no list {", ".join(missing)}).']
    problems = []
    expected = [(i + 1, name) for i, name in enumerate(DENSE_SCENES_CLASSES)]
    found = [(c.get('id'), c.get('name')) for c in coco['categories'] if isinstance(c, dict)]
    if found != expected:
        problems.append(f'{ann_file}: categories are {found}, expected ids 1..20 named '
                        f'{", ".join(DENSE_SCENES_CLASSES)} in this order.')
    sizes = {}
    for img in coco['images']:
        img_id = img.get('id') if isinstance(img, dict) else None
        if img_id in sizes:
            problems.append(f'{ann_file}: image id {img_id} is listed twice.')
            continue
        path = osp.join(img_dir, str(img.get('file_name')))
        if not osp.isfile(path):
            problems.append(f'{ann_file}: image id {img_id}: file {path} does not exist.')
            continue
        try:
            width, height = _image_size(path)
        except Exception as e:  # any decoder error is the problem to report
            problems.append(f'{ann_file}: image id {img_id}: {path} cannot be read '
                            f'({type(e).__name__}: {e}).')
            continue
        if (img.get('width'), img.get('height')) != (width, height):
            problems.append(f'{ann_file}: image id {img_id}: says {img.get("width")}x'
                            f'{img.get("height")} (width x height) but {path} is '
                            f'{width}x{height}.')
        sizes[img_id] = (height, width)
    ann_ids = set()
    for ann in coco['annotations']:
        ann_id = ann.get('id') if isinstance(ann, dict) else None
        where = f'{ann_file}: annotation id {ann_id}'
        if ann_id in ann_ids:
            problems.append(f'{where} is used twice.')
        ann_ids.add(ann_id)
        if ann_id is None:
            problems.append(f'{ann_file}: an annotation has no id: {str(ann)[:80]}.')
            continue
        img_id = ann.get('image_id')
        if img_id not in sizes:
            problems.append(f'{where}: image id {img_id} is not a readable image of this file.')
            continue
        height, width = sizes[img_id]
        where += f' (image id {img_id}, {width}x{height})'
        if ann.get('category_id') not in range(1, len(DENSE_SCENES_CLASSES) + 1):
            problems.append(f'{where}: category_id {ann.get("category_id")!r} is not in '
                            f'1..{len(DENSE_SCENES_CLASSES)}.')
        bbox = ann.get('bbox')
        if not (isinstance(bbox, list) and len(bbox) == 4
                and all(isinstance(v, (int, float)) for v in bbox)):
            problems.append(f'{where}: bbox {bbox!r} is not [x, y, w, h].')
            continue
        x, y, w, h = bbox
        if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > width or y + h > height:
            problems.append(f'{where}: bbox [x, y, w, h] = {bbox} is empty or reaches outside '
                            f'the {width}x{height} image.')
            continue
        rle = ann.get('segmentation')
        if not (isinstance(rle, dict) and 'size' in rle and 'counts' in rle):
            problems.append(f'{where}: segmentation is not an RLE dict with size and counts.')
            continue
        if list(rle['size']) != [height, width]:
            problems.append(f'{where}: mask size {list(rle["size"])} (h, w) differs from the '
                            f'image ({height}, {width}).')
            continue
        if isinstance(rle['counts'], list) and sum(rle['counts']) != height * width:
            problems.append(f'{where}: mask runs cover {sum(rle["counts"])} pixels, not '
                            f'{height}x{width}.')
            continue
        mask = rle_to_mask(rle)
        if not mask.any():
            problems.append(f'{where}: mask is empty.')
            continue
        if list(bbox) != tight_box(mask):
            problems.append(f'{where}: bbox {bbox} is not the tight box {tight_box(mask)} of '
                            'its mask.')
        if ann.get('area') != int(mask.sum()):
            problems.append(f'{where}: area {ann.get("area")} is not the mask\'s '
                            f'{int(mask.sum())} pixels.')
    return problems


def check_seg_pair(img_path: str, seg_path: str, num_classes: int,
                   ignore_index: int = 255) -> List[str]:
    """Check one image and its label map.

    Args:
        img_path (str): The scene image.
        seg_path (str): Its label map.
        num_classes (int): Allowed values are ``0..num_classes-1``.
        ignore_index (int): Also allowed. Defaults to 255.

    Returns:
        list[str]: Problems (empty when the pair is fine).
    """
    from PIL import Image

    if not osp.isfile(seg_path):
        return [f'{seg_path}: label map of {img_path} does not exist.']
    try:
        size = _image_size(img_path)
        with Image.open(seg_path) as seg:
            mode, seg_size = seg.mode, seg.size
            values = np.unique(np.asarray(seg)) if mode in ('L', 'P') else None
    except Exception as e:  # any decoder error is the problem to report
        return [f'{seg_path} or {img_path} cannot be read ({type(e).__name__}: {e}).']
    if values is None:
        return [f'{seg_path}: label map is mode {mode!r}; expected one channel of class '
                'indices (mode L).']
    problems = []
    if seg_size != size:
        problems.append(f'{seg_path}: label map is {seg_size[0]}x{seg_size[1]} but its image '
                        f'{img_path} is {size[0]}x{size[1]} (width x height).')
    bad = [int(v) for v in values if v >= num_classes and v != ignore_index]
    if bad:
        problems.append(f'{seg_path}: values {bad} are outside [0, {num_classes}) and not the '
                        f'ignore index {ignore_index}.')
    return problems


def check_dense_scenes(root: str, splits: Sequence[str] = DENSE_SCENES_SPLITS) -> List[str]:
    """Every check of a scene folder: the COCO files against their images,
    the label maps against theirs, the label maps against the COCO masks
    (label map = union of the visible instance masks, each with its
    category id) and the annotation files against meta.json's sha256.

    Args:
        root (str): The folder written by :func:`write_dense_scenes`.
        splits (Sequence[str]): Splits to check. Defaults to all three.

    Returns:
        list[str]: Problems (empty when all is well).
    """
    from PIL import Image

    problems = []
    meta = {}
    meta_path = osp.join(root, 'meta.json')
    if osp.isfile(meta_path):
        with open(meta_path, encoding='utf-8') as f:
            meta = json.load(f)
    else:
        problems.append(f'{meta_path} does not exist.')
    for split in splits:
        ann_name = f'annotations/instances_{split}.json'
        ann_file = osp.join(root, ann_name)
        img_dir, ann_dir = osp.join(root, 'img_dir', split), osp.join(root, 'ann_dir', split)
        coco_problems = check_coco_scenes(ann_file, img_dir)
        problems += coco_problems
        if not osp.isdir(img_dir):
            problems.append(f'{img_dir}: image folder does not exist.')
            continue
        names = sorted(n for n in os.listdir(img_dir) if n.endswith('.png'))
        for name in names:
            try:  # decode whole: a truncated PNG passes the header-only checks
                with Image.open(osp.join(img_dir, name)) as img:
                    img.load()
            except Exception as e:  # any decoder error is the problem to report
                problems.append(f'{osp.join(img_dir, name)} cannot be decoded '
                                f'({type(e).__name__}: {e}).')
                continue
            problems += check_seg_pair(osp.join(img_dir, name), osp.join(ann_dir, name),
                                       len(DENSE_SCENES_SEG_CLASSES))
        expected = meta.get('sha256', {}).get(ann_name)
        if expected and osp.isfile(ann_file) and file_sha256(ann_file) != expected:
            problems.append(f'{ann_file}: sha256 differs from the one in {meta_path}.')
        if coco_problems or not osp.isfile(ann_file):
            continue
        with open(ann_file, encoding='utf-8') as f:
            coco = json.load(f)
        listed = sorted(img['file_name'] for img in coco['images'])
        if listed != names:
            problems.append(f'{ann_file} lists {len(listed)} images but {img_dir} holds '
                            f'{len(names)} PNGs (not the same files).')
        by_image = {}
        for ann in coco['annotations']:
            by_image.setdefault(ann['image_id'], []).append(ann)
        for img in coco['images']:
            seg_path = osp.join(ann_dir, img['file_name'])
            if not osp.isfile(seg_path):
                continue
            expected_map = np.zeros((img['height'], img['width']), dtype=np.int64)
            overlap = False
            for ann in by_image.get(img['id'], []):
                mask = rle_to_mask(ann['segmentation'])
                overlap |= bool((expected_map[mask] > 0).any())
                expected_map[mask] = ann['category_id']
            with Image.open(seg_path) as seg:
                label_map = np.asarray(seg)
            if overlap:
                problems.append(f'{ann_file}: image id {img["id"]}: visible instance masks '
                                'overlap.')
            if label_map.shape != expected_map.shape or (label_map != expected_map).any():
                problems.append(f'{seg_path}: label map is not the union of the instance masks '
                                f'of image id {img["id"]} in {ann_file}.')
    return problems


def format_problems(owner: str, problems: Sequence[str], root: Optional[str],
                    shown: int = 10) -> str:
    """One error message for a list of problems, with the fix."""
    lines = [f'{owner}: {len(problems)} problem(s) in the dense scenes:']
    lines += [f'  - {p}' for p in problems[:shown]]
    if len(problems) > shown:
        lines.append(f'  ... and {len(problems) - shown} more '
                     f'(`python tools/check_data.py dense-scenes --data-root {root}` lists all).')
    lines.append(regenerate_hint(root))
    return '\n'.join(lines)
