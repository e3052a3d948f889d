"""VTAB-1k in the layout of the common release (used by NOAH, DTL, ...)."""
import codecs
import os
import os.path as osp
import re
from collections import OrderedDict
from typing import List, Optional, Sequence, Tuple

from mmpretrain.datasets import BaseDataset
from mmpretrain.registry import DATASETS

# Task folder name -> number of classes, in the order of the VTAB-1k tables.
VTAB1K_TASKS = OrderedDict([
    # natural
    ('cifar', 100),
    ('caltech101', 102),
    ('dtd', 47),
    ('oxford_flowers102', 102),
    ('oxford_iiit_pet', 37),
    ('svhn', 10),
    ('sun397', 397),
    # specialized
    ('patch_camelyon', 2),
    ('eurosat', 10),
    ('resisc45', 45),
    ('diabetic_retinopathy', 5),
    # structured
    ('clevr_count', 8),
    ('clevr_dist', 6),
    ('dmlab', 6),
    ('kitti', 4),
    ('dsprites_loc', 16),
    ('dsprites_ori', 16),
    ('smallnorb_azi', 18),
    ('smallnorb_ele', 9),
])

VTAB1K_GROUPS = {
    'natural': [
        'cifar', 'caltech101', 'dtd', 'oxford_flowers102', 'oxford_iiit_pet', 'svhn', 'sun397'
    ],
    'specialized': ['patch_camelyon', 'eurosat', 'resisc45', 'diabetic_retinopathy'],
    'structured': [
        'clevr_count', 'clevr_dist', 'dmlab', 'kitti', 'dsprites_loc', 'dsprites_ori',
        'smallnorb_azi', 'smallnorb_ele'
    ],
}

# Names used by the official DTL scripts for the same folders.
VTAB1K_ALIASES = {
    'cifar_100': 'cifar',
    'pets': 'oxford_iiit_pet',
    'flowers102': 'oxford_flowers102',
}

VTAB1K_SPLITS = ('train800val200', 'train800', 'val200', 'test')

_INT_RE = re.compile(r'-?[0-9]+')


@DATASETS.register_module()
class VTAB1k(BaseDataset):
    """One task of VTAB-1k, read from the common release layout.

    The expected layout is::

        data_root/
        └── <task>/
            ├── train800val200.txt
            ├── train800.txt
            ├── val200.txt
            ├── test.txt
            └── images/...

    Every non-blank line of a split file is ``<relpath> <label>``, where
    ``relpath`` is relative to the task folder. The line is split on the last
    whitespace, so a path may itself contain spaces.

    VTAB-1k ships no class names, so ``metainfo['classes']`` holds the labels
    as strings: ``('0', '1', ...)``.

    Args:
        data_root (str): The folder holding one sub-folder per task.
        task (str): Task folder name, one of :data:`VTAB1K_TASKS` (or an alias
            of the official DTL code: ``cifar_100``, ``pets``, ``flowers102``).
            Any other name is a custom task in the same layout and needs
            ``num_classes``.
        split (str): One of ``'train800val200'``, ``'train800'``,
            ``'val200'`` and ``'test'``. Defaults to ``'train800val200'``.
        num_classes (int, optional): Number of classes. Defaults to None,
            which takes it from :data:`VTAB1K_TASKS`; required for a custom
            task.
        pipeline (Sequence): Processing pipeline. Defaults to ``()``.
        test_mode (bool): ``test_mode=True`` means in test phase. Defaults to
            False.
        **kwargs: Other arguments of :class:`mmpretrain.datasets.BaseDataset`
            (e.g. ``indices``, ``lazy_init``, ``serialize_data``).
    """

    def __init__(self,
                 data_root: str,
                 task: str,
                 split: str = 'train800val200',
                 num_classes: Optional[int] = None,
                 pipeline: Sequence = (),
                 test_mode: bool = False,
                 **kwargs):
        task = VTAB1K_ALIASES.get(task, task)
        if split not in VTAB1K_SPLITS:
            raise ValueError(f'VTAB1k: unknown split {split!r}; allowed splits are '
                             f'{", ".join(VTAB1K_SPLITS)}.')
        if task in VTAB1K_TASKS:
            expected = VTAB1K_TASKS[task]
            if num_classes is not None and num_classes != expected:
                raise ValueError(f'VTAB1k: task {task!r} has {expected} classes, but '
                                 f'num_classes={num_classes} was given.')
            num_classes = expected
        elif num_classes is None:
            raise ValueError(
                f'VTAB1k: unknown task {task!r}. Known tasks are '
                f'{", ".join(VTAB1K_TASKS)} (aliases: '
                f'{", ".join(f"{k}->{v}" for k, v in VTAB1K_ALIASES.items())}); '
                'a custom task in the same layout needs an explicit num_classes.')
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) \
                or num_classes < 1:
            raise ValueError(f'VTAB1k: num_classes must be a positive int, got {num_classes!r}.')

        self.task = task
        self.split = split
        self.num_classes = num_classes

        metainfo = dict(classes=tuple(str(i) for i in range(num_classes)))
        # A user-given metainfo (e.g. real class names) takes precedence.
        metainfo.update(kwargs.pop('metainfo', None) or {})

        # Keep ``data_root`` as given (mmengine joins the relative paths), so
        # ``dataset.data_root`` means the same as in other OpenMMLab datasets.
        super().__init__(
            ann_file=osp.join(task, f'{split}.txt'),
            metainfo=metainfo,
            data_root=data_root,
            data_prefix=dict(img_path=task),
            pipeline=pipeline,
            test_mode=test_mode,
            **kwargs)

    def load_data_list(self) -> List[dict]:
        """Parse the split file into data info dicts.

        Returns:
            list[dict]: ``dict(img_path=<absolute path>, gt_label=<int>)``
            per line.
        """
        task_dir = osp.abspath(self.img_prefix)
        ann_file = osp.abspath(self.ann_file)
        if not osp.isdir(task_dir):
            root = osp.dirname(task_dir)
            found = ''
            if osp.isdir(root):
                found = f' Folders in {root}: {", ".join(sorted(_subdirs(root))) or "(none)"}.'
            raise FileNotFoundError(
                f'VTAB1k: task folder {task_dir} does not exist (data_root='
                f'{self.data_root!r}, task={self.task!r}).{found}')
        if not osp.isfile(ann_file):
            present = [s for s in VTAB1K_SPLITS if osp.isfile(osp.join(task_dir, f'{s}.txt'))]
            raise FileNotFoundError(
                f'VTAB1k: split file {ann_file} does not exist. Split files present in '
                f'{task_dir}: {", ".join(present) or "(none)"}.')

        entries = read_split_file(ann_file, task_dir, self.num_classes, 'VTAB1k',
                                  context=f'for task {self.task!r}')
        data_list = [dict(img_path=path, gt_label=label) for path, label, _ in entries]
        return data_list

    def extra_repr(self) -> List[str]:
        """The extra repr information of the dataset."""
        return [f'Task: \t{self.task} ({self.num_classes} classes)',
                f'Split: \t{self.split}'] + super().extra_repr()


def read_split_file(ann_file: str,
                    image_root: str,
                    num_classes: int,
                    owner: str,
                    problems: Optional[list] = None,
                    check_images: bool = True,
                    context: str = '') -> List[Tuple[str, int, int]]:
    """Parse a split file whose non-blank lines are ``<relpath> <label>``.

    The line is split on its last whitespace, so a path may contain spaces
    (ImageNet-A file names do). Labels are plain decimal ints in
    ``[0, num_classes)``.

    Args:
        ann_file (str): The split file.
        image_root (str): The folder the relative paths start from.
        num_classes (int): Number of classes.
        owner (str): Prefix of the messages, e.g. the dataset class name.
        problems (list, optional): Where to collect the messages instead of
            raising at the first problem (a bad line is then skipped).
            Defaults to None (raise).
        check_images (bool): Whether a listed image that is not a file is a
            problem. Defaults to True.
        context (str): Said after a label out of range, e.g.
            ``"for task 'cifar'"``. Defaults to ``''``.

    Returns:
        list[tuple]: ``(absolute image path, label, line number)`` per good
        line.
    """
    ann_file = osp.abspath(ann_file)
    image_root = osp.abspath(image_root)

    def problem(exc_type, msg):
        if problems is None:
            raise exc_type(f'{owner}: {msg}')
        problems.append(f'{owner}: {msg}')

    entries = []
    # Decoded line by line, so a file that is not UTF-8 is reported with the
    # line at fault instead of a bare UnicodeDecodeError with a byte offset.
    with open(ann_file, 'rb') as f:
        for lineno, raw in enumerate(f, 1):
            where = f'{ann_file}, line {lineno}'
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]  # some Windows editors prepend one
            try:
                line = raw.decode('utf-8').strip()
            except UnicodeDecodeError as e:
                problem(ValueError, f'{where} is not UTF-8 (byte {raw[e.start]:#04x} at '
                        f'column {e.start + 1}: {raw.strip()!r}); save the split file as '
                        f'UTF-8, e.g. iconv -f latin1 -t utf-8 OLD > NEW.')
                continue
            if not line:
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2:
                problem(ValueError, f'malformed line in {where}: {line!r}; '
                        'expected "<relpath> <int label>".')
                continue
            relpath, label = parts
            # Plain decimal only: int() would also take '1_0' or '+1'.
            if not _INT_RE.fullmatch(label):
                problem(ValueError, f'malformed line in {where}: {line!r}; '
                        f'label {label!r} is not an int.')
                continue
            gt_label = int(label)
            if not 0 <= gt_label < num_classes:
                problem(ValueError, f'label {gt_label} in {where} is outside '
                        f'[0, {num_classes}){" " + context if context else ""}.')
                continue
            img_path = osp.join(image_root, relpath)
            # Checked at build time, so a bad release fails now and not hours
            # into training when the loader reaches the file.
            if check_images and not osp.isfile(img_path):
                problem(FileNotFoundError,
                        f'image {img_path} does not exist (listed in {where}).')
                continue
            entries.append((img_path, gt_label, lineno))
    return entries


def _subdirs(path: str) -> List[str]:
    return [d.name for d in os.scandir(path) if d.is_dir()]
