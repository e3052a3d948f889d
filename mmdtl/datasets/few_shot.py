"""Few-shot fine-grained classification on the NOAH splits (FGVC-Aircraft,
Food-101, Oxford-Flowers102, Oxford-Pets, Stanford-Cars), and the runner that
applies ``shot`` / ``seed`` given on the command line."""
import copy
import os
import os.path as osp
import re
from collections import OrderedDict
from typing import List, Optional, Sequence, Tuple

from mmengine.registry import RUNNERS
from mmengine.runner import Runner
from mmpretrain.datasets import BaseDataset
from mmpretrain.registry import DATASETS

from .vtab import read_split_file

# Folder name (NOAH spelling, including "standford") -> number of classes.
FEW_SHOT_DATASETS = OrderedDict([
    ('fgvc-aircraft', 100),
    ('food101', 101),
    ('oxford-flowers102', 102),
    ('oxford-pets', 37),
    ('standford-cars', 196),
])
FEW_SHOT_ALIASES = {'stanford-cars': 'standford-cars'}
FEW_SHOT_SHOTS = (1, 2, 4, 8, 16)
FEW_SHOT_SEEDS = (0, 1, 2)
FEW_SHOT_SPLITS = ('train', 'val', 'test')

_TRAIN_LIST_RE = re.compile(r'train_meta\.list\.num_shot_([0-9]+)\.seed_([0-9]+)')


def available_train_lists(annotation_dir: str) -> List[Tuple[int, int]]:
    """The ``(shot, seed)`` pairs whose train list exists in a folder."""
    if not osp.isdir(annotation_dir):
        return []
    found = []
    for entry in os.listdir(annotation_dir):
        match = _TRAIN_LIST_RE.fullmatch(entry)
        if match:
            found.append((int(match.group(1)), int(match.group(2))))
    return sorted(found)


def describe_train_lists(pairs: Sequence[Tuple[int, int]]) -> str:
    """``'shot 1: seeds 0, 1, 2; shot 2: ...'`` for messages."""
    if not pairs:
        return '(none)'
    by_shot = OrderedDict()
    for shot, seed in pairs:
        by_shot.setdefault(shot, []).append(str(seed))
    return '; '.join(f'shot {k}: seeds {", ".join(v)}' for k, v in by_shot.items())


def check_shot_seed(shot, seed, owner: str) -> None:
    """Raise a ValueError naming the option unless both are valid ints."""
    if isinstance(shot, bool) or not isinstance(shot, int) or shot < 1:
        raise ValueError(f'{owner}: shot must be a positive int (the released splits have '
                         f'{", ".join(map(str, FEW_SHOT_SHOTS))}), got {shot!r}.')
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f'{owner}: seed must be an int >= 0 (the released splits have '
                         f'{", ".join(map(str, FEW_SHOT_SEEDS))}), got {seed!r}.')


def few_shot_run_dir(work_dir: str, shot: int, seed: int) -> str:
    """The folder of one (shot, seed) run inside ``work_dir``."""
    return osp.join(work_dir, f'shot{shot}_seed{seed}')


@DATASETS.register_module()
class FewShotFGVC(BaseDataset):
    """Few-shot fine-grained classification with the NOAH split files.

    The expected layout is that of the DTL release (``FGFS``)::

        data_root/
        ├── few-shot_split/
        │   └── <name>/annotations/
        │       ├── train_meta.list.num_shot_<shot>.seed_<seed>
        │       ├── val_meta.list
        │       └── test_meta.list
        └── <name>/<relpath of the split files>

    Every non-blank line of a split file is ``<relpath> <label>``, relative
    to ``data_root/<name>``. NOAH ships no class names, so
    ``metainfo['classes']`` holds the labels as strings.

    Args:
        data_root (str): The ``FGFS`` folder.
        name (str): One of :data:`FEW_SHOT_DATASETS` (``fgvc-aircraft``,
            ``food101``, ``oxford-flowers102``, ``oxford-pets``,
            ``standford-cars``); ``stanford-cars`` and the official scripts'
            ``-FS`` suffix are accepted too. Any other name is a custom
            dataset in the same layout and needs ``num_classes``.
        split (str): ``'train'``, ``'val'`` or ``'test'``. Defaults to
            ``'train'``.
        shot (int): Images per class of the train split (1, 2, 4, 8 or 16
            in the release). Ignored for val and test. Defaults to 16.
        seed (int): Which sampled train split (0, 1 or 2 in the release).
            Ignored for val and test. Defaults to 0.
        num_classes (int, optional): Number of classes. Defaults to None,
            which takes it from :data:`FEW_SHOT_DATASETS`.
        pipeline (Sequence): Processing pipeline. Defaults to ``()``.
        test_mode (bool): ``test_mode=True`` means in test phase. Defaults to
            False.
        **kwargs: Other arguments of :class:`mmpretrain.datasets.BaseDataset`.
    """

    def __init__(self,
                 data_root: str,
                 name: str,
                 split: str = 'train',
                 shot: int = 16,
                 seed: int = 0,
                 num_classes: Optional[int] = None,
                 pipeline: Sequence = (),
                 test_mode: bool = False,
                 **kwargs):
        owner = type(self).__name__
        name = canonical_few_shot_name(name)
        if split not in FEW_SHOT_SPLITS:
            raise ValueError(f'{owner}: unknown split {split!r}; allowed splits are '
                             f'{", ".join(FEW_SHOT_SPLITS)}.')
        if split == 'train':
            check_shot_seed(shot, seed, owner)
        if name in FEW_SHOT_DATASETS:
            expected = FEW_SHOT_DATASETS[name]
            if num_classes is not None and num_classes != expected:
                raise ValueError(f'{owner}: {name!r} has {expected} classes, but '
                                 f'num_classes={num_classes} was given.')
            num_classes = expected
        elif num_classes is None:
            raise ValueError(f'{owner}: unknown dataset {name!r}. Known datasets are '
                             f'{", ".join(FEW_SHOT_DATASETS)}; a custom dataset in the same '
                             'layout needs an explicit num_classes.')
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) \
                or num_classes < 1:
            raise ValueError(f'{owner}: num_classes must be a positive int, got {num_classes!r}.')

        self.name = name
        self.split = split
        self.shot = shot if split == 'train' else None
        self.seed = seed if split == 'train' else None
        self.num_classes = num_classes

        metainfo = dict(classes=tuple(str(i) for i in range(num_classes)))
        metainfo.update(kwargs.pop('metainfo', None) or {})
        super().__init__(
            ann_file=few_shot_split_file(name, split, shot, seed),
            metainfo=metainfo,
            data_root=data_root,
            data_prefix=dict(img_path=name),
            pipeline=pipeline,
            test_mode=test_mode,
            **kwargs)

    def load_data_list(self) -> List[dict]:
        """Parse the split file into data info dicts.

        Returns:
            list[dict]: ``dict(img_path=<absolute path>, gt_label=<int>)``
            per line.
        """
        owner = type(self).__name__
        ann_file = osp.abspath(self.ann_file)
        image_root = osp.abspath(self.img_prefix)
        if not osp.isfile(ann_file):
            annotation_dir = osp.dirname(ann_file)
            if not osp.isdir(annotation_dir):
                raise FileNotFoundError(
                    f'{owner}: split folder {annotation_dir} does not exist (data_root='
                    f'{self.data_root!r}, name={self.name!r}); copy NOAH\'s data/few-shot/'
                    f'{self.name} to few-shot_split/{self.name}.')
            hint = ''
            if self.split == 'train':
                hint = (' Train lists present: '
                        f'{describe_train_lists(available_train_lists(annotation_dir))}.')
            raise FileNotFoundError(f'{owner}: split file {ann_file} does not exist.{hint}')
        if not osp.isdir(image_root):
            raise FileNotFoundError(f'{owner}: image folder {image_root} does not exist '
                                    f'(data_root={self.data_root!r}, name={self.name!r}).')
        entries = read_split_file(ann_file, image_root, self.num_classes, owner)
        return [dict(img_path=path, gt_label=label) for path, label, _ in entries]

    def extra_repr(self) -> List[str]:
        """The extra repr information of the dataset."""
        body = [f'Dataset: \t{self.name} ({self.num_classes} classes)',
                f'Split: \t{self.split}']
        if self.split == 'train':
            body.append(f'Shot / seed: \t{self.shot} / {self.seed}')
        return body + super().extra_repr()


def canonical_few_shot_name(name: str) -> str:
    """The NOAH folder name of a few-shot dataset name or alias."""
    if not isinstance(name, str) or not name:
        raise ValueError(f'FewShotFGVC: name must be a dataset folder name, got {name!r}.')
    if name.endswith('-FS'):  # the official scripts' dataset names
        name = name[:-len('-FS')]
    return FEW_SHOT_ALIASES.get(name, name)


def few_shot_split_file(name: str, split: str, shot: int = 16, seed: int = 0) -> str:
    """The split file of a dataset, relative to the data root."""
    annotations = osp.join('few-shot_split', name, 'annotations')
    if split == 'train':
        return osp.join(annotations, f'train_meta.list.num_shot_{shot}.seed_{seed}')
    return osp.join(annotations, f'{split}_meta.list')


def apply_few_shot_options(cfg) -> None:
    """Apply the config's top-level ``shot`` and ``seed`` where they act.

    mmengine resolves a config variable where it is used when the file is
    read, so ``--cfg-options shot=4`` alone would change only the top-level
    key. This late step copies ``shot``/``seed`` into the train dataset,
    takes the learning rate from ``lr_per_shot[shot]`` when
    ``optim_wrapper.optimizer.lr`` is None, and moves the run into
    ``<work_dir>/shot<shot>_seed<seed>`` so that runs never share a folder.

    Args:
        cfg (Config): The config, changed in place.
    """
    owner = f'config {getattr(cfg, "filename", None) or ""}'.strip()
    shot = cfg.get('shot')
    seed = cfg.get('seed')
    try:
        check_shot_seed(shot, seed, owner)
    except ValueError as e:
        raise ValueError(f'{e} Set them with --cfg-options shot=<k> seed=<s>.') from None
    train = cfg.get('train_dataloader')
    if train and train.get('dataset') is not None:
        train['dataset']['shot'] = shot
        train['dataset']['seed'] = seed
    optimizer = (cfg.get('optim_wrapper') or {}).get('optimizer')
    if optimizer is not None and optimizer.get('lr') is None:
        table = cfg.get('lr_per_shot') or {}
        # --cfg-options lr_per_shot.4=... adds a str key: it wins
        lr = table.get(str(shot), table.get(shot))
        if lr is None:
            known = ', '.join(str(k) for k in table) or '(none)'
            raise ValueError(
                f'{owner}: lr_per_shot has no learning rate for shot={shot} (it has shots '
                f'{known}); set optim_wrapper.optimizer.lr explicitly.')
        optimizer['lr'] = lr
    if cfg.get('work_dir'):
        cfg['work_dir'] = few_shot_run_dir(cfg['work_dir'], shot, seed)


@RUNNERS.register_module()
class FewShotRunner(Runner):
    """A :class:`mmengine.runner.Runner` for configs trained on a few-shot
    split, whose ``shot`` and ``seed`` are top-level config keys.

    ``--cfg-options shot=4 seed=1`` then selects the split file, the
    learning rate of the released recipe for that shot (``lr_per_shot``) and
    the work directory ``<work_dir>/shot4_seed1``; see
    :func:`apply_few_shot_options`. Configs opt in with
    ``runner_type = 'FewShotRunner'`` (``tools/train.py`` and
    ``tools/test.py`` build the runner from the registry then).
    """

    @classmethod
    def from_cfg(cls, cfg) -> 'Runner':
        """Build the runner after applying ``shot`` and ``seed``."""
        cfg = copy.deepcopy(cfg)
        apply_few_shot_options(cfg)
        return super().from_cfg(cfg)
