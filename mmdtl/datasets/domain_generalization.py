"""Domain generalization: train on ImageNet 16-shot, evaluate on ImageNet and
four shifted test sets (NOAH split files, layout of the DTL release)."""
import os.path as osp
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Union

from mmpretrain.datasets import BaseDataset
from mmpretrain.registry import DATASETS

from .few_shot import available_train_lists, check_shot_seed, describe_train_lists
from .vtab import read_split_file

# Folder name -> display name, in the order of the paper's table.
DG_TARGETS = OrderedDict([
    ('imagenet', 'ImageNet'),
    ('imagenetv2', 'ImageNet-V2'),
    ('imagenet-sketch', 'ImageNet-Sketch'),
    ('imagenet-adversarial', 'ImageNet-A'),
    ('imagenet-rendition', 'ImageNet-R'),
])
# Test sets that cover only 200 of the 1000 classes (labels are ImageNet
# indices): their accuracy is also reported with the argmax restricted to them.
DG_SUBSET_TARGETS = ('imagenet-adversarial', 'imagenet-rendition')
DG_ALIASES = {
    'imagenet-v2': 'imagenetv2',
    'imagenet-a': 'imagenet-adversarial',
    'imagenet-r': 'imagenet-rendition',
    'imagenet-s': 'imagenet-sketch',
}
DG_NUM_CLASSES = 1000
DG_SPLITS = ('train', 'test')


def canonical_dg_name(name: str) -> str:
    """The folder name of a DG dataset name or alias."""
    if not isinstance(name, str) or not name:
        raise ValueError(f'DomainGeneralization: name must be a dataset folder name, '
                         f'got {name!r}.')
    return DG_ALIASES.get(name, name)


def dg_split_file(name: str, split: str, shot: int = 16, seed: int = 0) -> str:
    """The split file of a DG dataset, relative to the data root."""
    annotations = osp.join(name, 'annotations')
    if split == 'train':
        return osp.join(annotations, f'train_meta.list.num_shot_{shot}.seed_{seed}')
    return osp.join(annotations, 'val_meta.list')


def dg_image_root(name: str, split: str) -> str:
    """The folder the paths of a split file start from, relative to the data root."""
    if name == 'imagenet':
        return osp.join('imagenet', 'images', 'train' if split == 'train' else 'val')
    return name


@DATASETS.register_module()
class DomainGeneralization(BaseDataset):
    """ImageNet few-shot training and the domain-shifted ImageNet test sets.

    The expected layout is that of the DTL release (``DG``)::

        data_root/
        ├── imagenet/
        │   ├── annotations/
        │   │   ├── train_meta.list.num_shot_16.seed_<seed>
        │   │   └── val_meta.list
        │   └── images/{train,val}/<relpath>
        ├── imagenetv2/annotations/val_meta.list       (+ images, <relpath>)
        ├── imagenet-sketch/annotations/val_meta.list
        ├── imagenet-adversarial/annotations/val_meta.list
        └── imagenet-rendition/annotations/val_meta.list

    Every non-blank line of a split file is ``<relpath> <label>`` with the
    ImageNet-1k class index as label; paths are relative to
    ``imagenet/images/{train,val}`` for ImageNet and to ``<name>`` for the
    other sets.

    Several test sets can be evaluated in one pass: give a list of names.
    Every data info then carries ``domain=<name>`` (add ``'domain'`` to
    ``PackInputs.meta_keys``), and ``metainfo['class_subsets']`` maps every
    name to the classes it covers (None for all 1000), which
    :class:`mmdtl.evaluation.MaskedAccuracy` uses to report ImageNet-A and
    ImageNet-R over their own 200 classes as well.

    Args:
        data_root (str): The ``DG`` folder.
        name (str | Sequence[str]): One of :data:`DG_TARGETS` (aliases
            ``imagenet-v2``, ``imagenet-a``, ``imagenet-r``,
            ``imagenet-s``), or a list of them for the test split. Defaults to
            ``'imagenet'``.
        split (str): ``'train'`` (ImageNet only) or ``'test'``. Defaults to
            ``'test'``.
        shot (int): Images per class of the train split. Defaults to 16.
        seed (int): Which sampled train split (0, 1 or 2). Defaults to 0.
        class_subsets (dict, optional): ``{name: [class indices]}`` to use
            instead of the classes found in the split file for
            ImageNet-A/-R, or to restrict another set. Defaults to None.
        num_classes (int): Number of classes of the labels. Defaults to 1000.
        pipeline (Sequence): Processing pipeline. Defaults to ``()``.
        test_mode (bool): ``test_mode=True`` means in test phase. Defaults to
            False.
        **kwargs: Other arguments of :class:`mmpretrain.datasets.BaseDataset`.
    """

    def __init__(self,
                 data_root: str,
                 name: Union[str, Sequence[str]] = 'imagenet',
                 split: str = 'test',
                 shot: int = 16,
                 seed: int = 0,
                 class_subsets: Optional[Dict[str, Sequence[int]]] = None,
                 num_classes: int = DG_NUM_CLASSES,
                 pipeline: Sequence = (),
                 test_mode: bool = False,
                 **kwargs):
        owner = type(self).__name__
        if split not in DG_SPLITS:
            raise ValueError(f'{owner}: unknown split {split!r}; allowed splits are '
                             f'{", ".join(DG_SPLITS)}.')
        names = [name] if isinstance(name, str) else list(name)
        if not names:
            raise ValueError(f'{owner}: name must name at least one dataset.')
        names = [canonical_dg_name(n) for n in names]
        unknown = [n for n in names if n not in DG_TARGETS]
        if unknown:
            raise ValueError(f'{owner}: unknown dataset(s) {", ".join(map(repr, unknown))}; '
                             f'known are {", ".join(DG_TARGETS)} (aliases: '
                             f'{", ".join(f"{k}->{v}" for k, v in DG_ALIASES.items())}).')
        if len(set(names)) != len(names):
            raise ValueError(f'{owner}: name lists a dataset twice: {names}.')
        if split == 'train':
            if names != ['imagenet']:
                raise ValueError(f'{owner}: the train split is ImageNet few-shot only '
                                 f'(name=\'imagenet\'), got name={name!r}.')
            check_shot_seed(shot, seed, owner)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) \
                or num_classes < 1:
            raise ValueError(f'{owner}: num_classes must be a positive int, got {num_classes!r}.')
        class_subsets = dict(class_subsets or {})
        for key in class_subsets:
            if canonical_dg_name(key) not in names:
                raise ValueError(f'{owner}: class_subsets names {key!r}, which is not among '
                                 f'the datasets {names}.')

        self.names = names
        self.split = split
        self.shot = shot if split == 'train' else None
        self.seed = seed if split == 'train' else None
        self.num_classes = num_classes
        self._given_subsets = {canonical_dg_name(k): v for k, v in class_subsets.items()}

        metainfo = dict(classes=tuple(str(i) for i in range(num_classes)),
                        domains=tuple(names))
        metainfo.update(kwargs.pop('metainfo', None) or {})
        super().__init__(
            ann_file='',
            metainfo=metainfo,
            data_root=data_root,
            pipeline=pipeline,
            test_mode=test_mode,
            **kwargs)

    def _split_file(self, name: str) -> str:
        return osp.abspath(osp.join(self.data_root, dg_split_file(
            name, self.split, self.shot, self.seed)))

    def load_data_list(self) -> List[dict]:
        """Parse the split file(s) into data info dicts.

        Returns:
            list[dict]: ``dict(img_path=<absolute path>, gt_label=<int>,
            domain=<name>)`` per line, the datasets one after the other.
        """
        owner = type(self).__name__
        data_list = []
        subsets = {}
        for name in self.names:
            ann_file = self._split_file(name)
            image_root = osp.abspath(osp.join(self.data_root, dg_image_root(name, self.split)))
            if not osp.isfile(ann_file):
                hint = ''
                if self.split == 'train':
                    found = available_train_lists(osp.dirname(ann_file))
                    hint = f' Train lists present: {describe_train_lists(found)}.'
                raise FileNotFoundError(
                    f'{owner}: split file {ann_file} does not exist (data_root='
                    f'{self.data_root!r}, name={name!r}).{hint}')
            if not osp.isdir(image_root):
                raise FileNotFoundError(f'{owner}: image folder {image_root} does not exist '
                                        f'(data_root={self.data_root!r}, name={name!r}).')
            entries = read_split_file(ann_file, image_root, self.num_classes, owner)
            data_list.extend(
                dict(img_path=path, gt_label=label, domain=name) for path, label, _ in entries)
            subsets[name] = self._class_subset(name, {label for _, label, _ in entries})
        # Known only once the lists are read; the evaluator reads it after.
        self._metainfo['class_subsets'] = subsets
        return data_list

    def _class_subset(self, name: str, found: set) -> Optional[tuple]:
        owner = type(self).__name__
        given = self._given_subsets.get(name)
        if given is not None:
            subset = sorted({int(c) for c in given})
            bad = [c for c in subset if not 0 <= c < self.num_classes]
            if bad:
                raise ValueError(f'{owner}: class_subsets[{name!r}] has classes outside '
                                 f'[0, {self.num_classes}): {bad[:10]}.')
            outside = sorted(found.difference(subset))
            if outside:
                raise ValueError(f'{owner}: {self._split_file(name)} has labels outside '
                                 f'class_subsets[{name!r}]: {outside[:10]}.')
            return tuple(subset)
        if name in DG_SUBSET_TARGETS and len(found) < self.num_classes:
            return tuple(sorted(found))
        return None

    def extra_repr(self) -> List[str]:
        """The extra repr information of the dataset."""
        body = [f'Datasets: \t{", ".join(self.names)}', f'Split: \t{self.split}']
        if self.split == 'train':
            body.append(f'Shot / seed: \t{self.shot} / {self.seed}')
        return body + super().extra_repr()
