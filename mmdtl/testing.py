"""Helpers for tests: small data trees in the real layouts (nothing is downloaded)."""
import os
import os.path as osp
from typing import Dict, Mapping, Optional, Sequence

import numpy as np

from mmdtl.datasets.few_shot import FEW_SHOT_DATASETS
from mmdtl.datasets.vtab import VTAB1K_TASKS


def make_vtab_tree(root: str,
                   task: str = 'cifar',
                   num_classes: Optional[int] = None,
                   sizes: Optional[Dict[str, int]] = None,
                   image_size: int = 32,
                   seed: int = 0) -> str:
    """Write a tiny VTAB-1k task folder of random RGB PNG images.

    The layout is that of the real release: ``<root>/<task>/images/<split>/``
    and the split files ``train800.txt``, ``val200.txt``, ``test.txt`` and
    ``train800val200.txt`` (= the ``train800`` lines followed by the
    ``val200`` lines), each line ``<relpath> <label>``. Labels cycle over the
    classes, so every class appears once a split has ``num_classes`` images.

    Args:
        root (str): The data root (pass it as ``data_root`` to ``VTAB1k``).
        task (str): Task folder name. Defaults to ``'cifar'``.
        num_classes (int, optional): Number of classes. Defaults to None,
            which takes ``VTAB1K_TASKS[task]`` (required for other names).
        sizes (dict, optional): Number of images per split, keys
            ``train800``, ``val200`` and ``test``. Defaults to
            ``dict(train800=8, val200=4, test=6)``.
        image_size (int): Side of the square images. Defaults to 32.
        seed (int): Seed of the random pixels. Defaults to 0.

    Returns:
        str: The task folder path, ``<root>/<task>``.
    """
    from PIL import Image

    if num_classes is None:
        if task not in VTAB1K_TASKS:
            raise ValueError(f'make_vtab_tree: unknown task {task!r} needs num_classes.')
        num_classes = VTAB1K_TASKS[task]
    sizes = {**dict(train800=8, val200=4, test=6), **(sizes or {})}
    rng = np.random.default_rng(seed)
    task_dir = osp.join(root, task)

    lines = {}
    for split in ('train800', 'val200', 'test'):
        os.makedirs(osp.join(task_dir, 'images', split), exist_ok=True)
        lines[split] = []
        for i in range(sizes[split]):
            relpath = f'images/{split}/{i:06d}.png'
            pixels = rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(osp.join(task_dir, relpath))
            lines[split].append(f'{relpath} {i % num_classes}\n')
    lines['train800val200'] = lines['train800'] + lines['val200']
    for split, split_lines in lines.items():
        with open(osp.join(task_dir, f'{split}.txt'), 'w', encoding='utf-8') as f:
            f.writelines(split_lines)
    return task_dir


def make_few_shot_tree(root: str,
                       name: str = 'oxford-pets',
                       num_classes: Optional[int] = None,
                       shots: Sequence[int] = (1, 2),
                       seeds: Sequence[int] = (0, ),
                       image_size: int = 8,
                       rng_seed: int = 0) -> str:
    """Write a NOAH-layout few-shot tree of random RGB PNG images.

    The layout is that of NOAH's release, which ``FewShotFGVC`` reads:
    ``<root>/<name>/<file>.png`` and
    ``<root>/few-shot_split/<name>/annotations/`` with
    ``train_meta.list.num_shot_<k>.seed_<s>`` (k images of every class, the
    seed picking which of the ``max(shots)`` written per class),
    ``val_meta.list`` and ``test_meta.list`` (one image per class), each line
    ``<file> <label>``.

    Args:
        root (str): The data root (``data_root`` of ``FewShotFGVC``).
        name (str): Dataset folder name. Defaults to ``'oxford-pets'``.
        num_classes (int, optional): Number of classes. Defaults to None,
            which takes ``FEW_SHOT_DATASETS[name]`` (required for other names).
        shots (Sequence[int]): Shots with a train list. Defaults to (1, 2).
        seeds (Sequence[int]): Seeds with a train list. Defaults to (0, ).
        image_size (int): Side of the square images. Defaults to 8.
        rng_seed (int): Seed of the random pixels. Defaults to 0.

    Returns:
        str: The annotations folder.
    """
    from PIL import Image

    if num_classes is None:
        if name not in FEW_SHOT_DATASETS:
            raise ValueError(f'make_few_shot_tree: unknown dataset {name!r} needs num_classes.')
        num_classes = FEW_SHOT_DATASETS[name]
    rng = np.random.default_rng(rng_seed)
    image_dir = osp.join(root, name)
    ann_dir = osp.join(root, 'few-shot_split', name, 'annotations')
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(ann_dir, exist_ok=True)

    def image(fname):
        pixels = rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(osp.join(image_dir, fname))
        return fname

    pool = {c: [image(f'{c:03d}_train_{i}.png') for i in range(max(shots))]
            for c in range(num_classes)}
    for shot in shots:
        for seed in seeds:
            lines = []
            for c in range(num_classes):
                picked = np.random.default_rng(seed).permutation(len(pool[c]))[:shot]
                lines += [f'{pool[c][i]} {c}\n' for i in sorted(picked)]
            with open(osp.join(ann_dir, f'train_meta.list.num_shot_{shot}.seed_{seed}'),
                      'w') as f:
                f.writelines(lines)
    for split in ('val', 'test'):
        with open(osp.join(ann_dir, f'{split}_meta.list'), 'w') as f:
            f.writelines(f'{image(f"{c:03d}_{split}.png")} {c}\n' for c in range(num_classes))
    return ann_dir


# Classes of make_dg_tree's test sets; -A and -R cover a subset, as the real
# ones do (200 of the 1000 classes).
DG_TREE_CLASSES = {
    'imagenet': (0, 1, 954, 999),
    'imagenetv2': (0, 1, 954, 999),
    'imagenet-sketch': (0, 1, 954, 999),
    'imagenet-adversarial': (1, 954),
    'imagenet-rendition': (0, 954, 999),
}


def make_dg_tree(root: str,
                 classes: Optional[Mapping[str, Sequence[int]]] = None,
                 train_per_class: int = 2,
                 seeds: Sequence[int] = (0, 1, 2),
                 image_size: int = 8) -> str:
    """Write a domain-generalization tree in the layout of the DTL release,
    random RGB PNG images.

    ImageNet: ``imagenet/images/{train,val}/<wnid>/...`` with
    ``imagenet/annotations/train_meta.list.num_shot_16.seed_<s>`` (only
    ``train_per_class`` images per class: the layout, not the size) and
    ``val_meta.list``; the other sets ``<name>/<prefix>/<wnid>/...`` with
    ``<name>/annotations/val_meta.list``. ImageNet-A names contain spaces as
    the real ones do. Two test images per class.

    Args:
        root (str): The data root (``data_root`` of ``DomainGeneralization``).
        classes (Mapping, optional): Class indices per set, keys among
            those of :data:`DG_TREE_CLASSES` (``'imagenet'`` required: its
            classes are the training ones). Defaults to
            :data:`DG_TREE_CLASSES`.
        train_per_class (int): Training images per class. Defaults to 2.
        seeds (Sequence[int]): Seeds with a train list. Defaults to (0, 1, 2).
        image_size (int): Side of the square images. Defaults to 8.

    Returns:
        str: ``root``.
    """
    from PIL import Image

    classes = classes or DG_TREE_CLASSES
    rng = np.random.default_rng(0)

    def write(folder, relpath):
        os.makedirs(osp.dirname(osp.join(folder, relpath)), exist_ok=True)
        pixels = rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(osp.join(folder, relpath))
        return relpath

    def write_list(path, lines):
        os.makedirs(osp.dirname(path), exist_ok=True)
        with open(path, 'w') as f:
            f.writelines(lines)

    prefixes = {'imagenetv2': 'imagenetv2-matched-frequency-format-val/{c}',
                'imagenet-sketch': 'images/n{c:08d}',
                'imagenet-adversarial': 'imagenet-a/n{c:08d}',
                'imagenet-rendition': 'imagenet-r/n{c:08d}'}
    train_dir = osp.join(root, 'imagenet', 'images', 'train')
    train = {c: [write(train_dir, f'n{c:08d}/n{c:08d}_{i}.png') for i in range(train_per_class)]
             for c in classes['imagenet']}
    for seed in seeds:
        write_list(osp.join(root, 'imagenet', 'annotations',
                            f'train_meta.list.num_shot_16.seed_{seed}'),
                   [f'{p} {c}\n' for c, paths in train.items() for p in paths])
    for name, cls in classes.items():
        if name == 'imagenet':
            folder, fmt = osp.join(root, 'imagenet', 'images', 'val'), 'n{c:08d}'
        else:
            folder, fmt = osp.join(root, name), prefixes[name]
        stem = '0.1_soap dispenser _ soap dispenser' if name == 'imagenet-adversarial' else 'x'
        lines = [f'{write(folder, fmt.format(c=c) + f"/{stem}_{i}.png")} {c}\n'
                 for c in cls for i in range(2)]
        write_list(osp.join(root, name, 'annotations', 'val_meta.list'), lines)
    return root


def make_fashion_mnist_files(folder: str, num_test: int = 3000, num_train: int = 64,
                             seed: int = 0) -> str:
    """Random 28x28 images under the four Fashion-MNIST file names (IDX,
    gzipped, as Debian's dataset-fashion-mnist installs them); labels cycle
    over 0..9. The real format without the real data.

    Returns:
        str: ``folder``.
    """
    from mmdtl.datasets.mini_vtab import write_idx

    rng = np.random.default_rng(seed)
    folder = str(folder)
    os.makedirs(folder, exist_ok=True)
    for prefix, n in (('train', num_train), ('t10k', num_test)):
        write_idx(osp.join(folder, f'{prefix}-images-idx3-ubyte.gz'),
                  rng.integers(0, 256, (n, 28, 28)))
        write_idx(osp.join(folder, f'{prefix}-labels-idx1-ubyte.gz'), np.arange(n) % 10)
    return folder


def csn_training_step(model, images):
    """One backward pass of a DTL backbone on ``sum(out ** 2)`` of its first
    output: the output and the side network's gradients, to compare two
    ways of computing the same model.

    Returns:
        tuple: (detached output, {CSN parameter name: gradient}).
    """
    out = model(images)[0]
    model.zero_grad()
    (out ** 2).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.csn.named_parameters()}


def reference_dtl_forward(parent, csn, blocks, images, num_extra_tokens=0):
    """DTL written out from the paper's equations on the parent's own forward.

    The unmodified mmpretrain backbone ``parent`` runs its ``forward``; hooks
    on its ``blocks`` (global index = position) do what the paper says:
    before tapped block ``i`` the running sum of its stage grows by
    ``z A_i^T B_i^T``, after every block ``i >= M`` the block output grows by
    ``g(swish_beta(h))`` (g: the stage's depthwise conv with 'same' padding
    on the patch grid, cls tokens swish only). Nothing of mmdtl's runner or
    adapters is used, so it checks them independently. Maps ``(B, C, H, W)``
    (ConvNeXt) are read as channels-last tokens.

    Args:
        parent (nn.Module): The parent backbone holding the trunk weights.
        csn (CompactSideNetwork): The side network (its parameters receive
            the gradients).
        blocks (Sequence[nn.Module]): The parent's blocks in order.
        images (Tensor): The input.
        num_extra_tokens (int): Leading tokens outside the patch grid.

    Returns:
        tuple: The parent's outputs.
    """
    import torch
    import torch.nn.functional as F

    state = dict(sum=None, grid=None)

    def as_tokens(x):
        return x.flatten(2).transpose(1, 2) if x.dim() == 4 else x

    def before(index):
        def hook(module, args):
            x = args[0]
            if x.dim() == 4:
                state['grid'] = tuple(x.shape[-2:])
            elif len(args) > 1 and isinstance(args[1], (tuple, list)):
                state['grid'] = tuple(args[1])  # Swin's hw_shape
            if index > 0 and csn.stages[index] != csn.stages[index - 1]:
                state['sum'] = None  # the running sum restarts at every stage
            if str(index) in csn.down_projs:
                a, b = csn.down_projs[str(index)], csn.up_projs[str(index)]
                side = as_tokens(x) @ a.T @ b.T
                state['sum'] = side if state['sum'] is None else state['sum'] + side
        return hook

    def after(index):
        def hook(module, args, out):
            h = state['sum']
            side = h * torch.sigmoid(csn.beta * h)
            if csn.dwconv_kernel:
                k, (height, width) = csn.dwconv_kernel, state['grid']
                weight = csn.dwconvs[str(csn.stages[index])].weight
                patches = side[:, num_extra_tokens:].transpose(1, 2)
                patches = patches.reshape(len(side), -1, height, width)
                # 'same': an even kernel pads one more at the bottom/right.
                patches = F.pad(patches, ((k - 1) // 2, k // 2, (k - 1) // 2, k // 2))
                patches = F.conv2d(patches, weight, groups=patches.shape[1])
                side = torch.cat([side[:, :num_extra_tokens],
                                  patches.flatten(2).transpose(1, 2)], dim=1)
            if out.dim() == 4:
                return out + side.transpose(1, 2).reshape(out.shape)
            return out + side
        return hook

    def patch_grid(module, args, out):
        state['grid'] = tuple(out[1])

    handles = []
    if hasattr(parent, 'patch_embed'):
        handles.append(parent.patch_embed.register_forward_hook(patch_grid))
    for index, block in enumerate(blocks):
        handles.append(block.register_forward_pre_hook(before(index)))
        if index in csn.adds_back:
            handles.append(block.register_forward_hook(after(index)))
    try:
        return parent(images)
    finally:
        for handle in handles:
            handle.remove()
