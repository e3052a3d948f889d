"""Check a dataset root for one of the paper's protocols before training.

Every split file must be present; every line must be ``<relpath> <label>``
with a label in range; every listed image must exist and decode whole with
PIL (``verify``, then a full decode to RGB, which catches truncated files).
Every problem is collected with its file and line (:func:`check_data_root`).

``dense-scenes`` (the folder of ``tools/misc/make_dense_scenes.py``) checks the
COCO files against their images (sizes, boxes = tight boxes of the masks,
areas, categories), the label maps (size, values in [0, 21) or 255), that each
label map is the union of its image's instance masks, and the annotation files
against the sha256s in ``meta.json``.

``tools/check_data.py`` is the command line of this module.
"""
import json
import os
import os.path as osp
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple

from mmdtl.datasets.dense_scenes import (
    DENSE_SCENES_SPLITS,
    check_dense_scenes,
    regenerate_hint,
)
from mmdtl.datasets.domain_generalization import (
    DG_SUBSET_TARGETS,
    DG_TARGETS,
    canonical_dg_name,
    dg_image_root,
    dg_split_file,
)
from mmdtl.datasets.few_shot import (
    FEW_SHOT_DATASETS,
    FEW_SHOT_SEEDS,
    FEW_SHOT_SHOTS,
    canonical_few_shot_name,
    few_shot_split_file,
)
from mmdtl.datasets.vtab import VTAB1K_ALIASES, VTAB1K_SPLITS, VTAB1K_TASKS, read_split_file

SUITES = ('vtab', 'few-shot', 'domain-generalization', 'dense-scenes')
# tools/run_suite.py's suite names work here too.
SUITE_ALIASES = {
    'vtab-vit-dtl': 'vtab', 'vtab-vit-dtl+': 'vtab', 'vtab-swin-dtl': 'vtab',
    'vtab-swin-dtl+': 'vtab', 'dg': 'domain-generalization', 'fgfs': 'few-shot',
    'domain-generalization-all-targets': 'domain-generalization',
}


class Checker:
    """Collects the problems of a data root, and the images to verify.

    Args:
        root (str): The data root (paths are printed relative to it).
        verify (bool): Open every listed image with PIL. Defaults to True.
        workers (int): Threads verifying images. Defaults to 8.
    """

    def __init__(self, root: str, verify: bool = True, workers: int = 8):
        self.root = root
        self.verify = verify
        self.workers = workers
        self.problems: List[str] = []
        # image path -> (split file, line) of its first listing
        self.images: Dict[str, Tuple[str, int]] = {}
        # images checked (and decoded) by a suite's own check instead
        self.checked_elsewhere = 0

    def problem(self, msg: str) -> None:
        """Record one problem (and print it as it is found)."""
        self.problems.append(msg)
        print(f'  PROBLEM: {msg}')

    def split_file(self, owner: str, ann_file: str, image_root: str,
                   num_classes: int) -> Optional[List[Tuple[str, int, int]]]:
        """Parse one split file; None when it is missing."""
        if not osp.isfile(ann_file):
            self.problem(f'{owner}: split file {osp.abspath(ann_file)} does not exist.')
            return None
        found: List[str] = []
        entries = read_split_file(ann_file, image_root, num_classes, owner, problems=found)
        for msg in found:
            self.problem(msg)
        for path, _, lineno in entries:
            self.images.setdefault(path, (osp.abspath(ann_file), lineno))
        labels = len({label for _, label, _ in entries})
        print(f'  {osp.relpath(ann_file, self.root)}: {len(entries)} images, {labels} classes'
              + (f', {len(found)} bad lines' if found else ''))
        return entries

    def verify_images(self) -> None:
        """Open every listed image once (PIL verify), in threads."""
        if not self.verify or not self.images:
            return
        print(f'Verifying {len(self.images)} images with PIL ({self.workers} threads)...')
        items = sorted(self.images.items())
        with ThreadPoolExecutor(max(1, self.workers)) as pool:
            for (path, (ann_file, lineno)), error in zip(items, pool.map(_read_error, items)):
                if error:
                    self.problem(f'image {path} cannot be read (listed in {ann_file}, line '
                                 f'{lineno}): {error}')


def _read_error(item) -> Optional[str]:
    from PIL import Image
    path = item[0]
    try:
        with Image.open(path) as img:
            img.verify()
        # verify() checks the structure only: a truncated JPEG passes it. Decode
        # the whole image as the training loader does.
        with Image.open(path) as img:
            img.convert('RGB')
    except Exception as e:  # any decoder error is the problem to report
        return f'{type(e).__name__}: {e}'
    return None


def check_vtab(checker: Checker, root: str, names: Optional[List[str]]) -> None:
    """The three split files of every VTAB-1k task (train800val200 must be
    train800 plus val200).

    Args:
        checker (Checker): Collects the problems and the images to decode.
        root (str): The data root.
        names (list[str], optional): Only these tasks (or their aliases); None for all.
    """
    tasks = [VTAB1K_ALIASES.get(n, n) for n in names] if names else list(VTAB1K_TASKS)
    for task in tasks:
        print(f'VTAB-1k {task}:')
        if task not in VTAB1K_TASKS:
            checker.problem(f'VTAB1k: unknown task {task!r}; known tasks are '
                            f'{", ".join(VTAB1K_TASKS)}.')
            continue
        task_dir = osp.join(root, task)
        if not osp.isdir(task_dir):
            checker.problem(f'VTAB1k: task folder {osp.abspath(task_dir)} does not exist.')
            continue
        lines = {}
        for split in VTAB1K_SPLITS:
            entries = checker.split_file('VTAB1k', osp.join(task_dir, f'{split}.txt'), task_dir,
                                         VTAB1K_TASKS[task])
            if entries is not None:
                lines[split] = Counter((path, label) for path, label, _ in entries)
        if all(s in lines for s in ('train800val200', 'train800', 'val200')) and \
                lines['train800val200'] != lines['train800'] + lines['val200']:
            checker.problem(f'VTAB1k: {osp.abspath(osp.join(task_dir, "train800val200.txt"))} '
                            'is not the lines of train800.txt plus those of val200.txt.')


def check_few_shot(checker: Checker, root: str, names: Optional[List[str]],
                   shots: List[int], seeds: List[int]) -> None:
    """The val/test lists and the k-shot train lists of the FGVC datasets.

    Args:
        checker (Checker): Collects the problems and the images to decode.
        root (str): The data root.
        names (list[str], optional): Only these datasets; None for all.
        shots (list[int]): Train lists ``num_shot_<k>`` to check.
        seeds (list[int]): Their seeds.
    """
    datasets = [canonical_few_shot_name(n) for n in names] if names else list(FEW_SHOT_DATASETS)
    for name in datasets:
        print(f'Few-shot {name}:')
        if name not in FEW_SHOT_DATASETS:
            checker.problem(f'FewShotFGVC: unknown dataset {name!r}; known datasets are '
                            f'{", ".join(FEW_SHOT_DATASETS)}.')
            continue
        num_classes = FEW_SHOT_DATASETS[name]
        image_root = osp.join(root, name)
        if not osp.isdir(image_root):
            checker.problem(f'FewShotFGVC: image folder {osp.abspath(image_root)} does not '
                            'exist.')
            continue
        for split in ('val', 'test'):
            checker.split_file('FewShotFGVC', osp.join(root, few_shot_split_file(name, split)),
                               image_root, num_classes)
        for shot in shots:
            for seed in seeds:
                ann_file = osp.join(root, few_shot_split_file(name, 'train', shot, seed))
                entries = checker.split_file('FewShotFGVC', ann_file, image_root, num_classes)
                if entries is not None:
                    _check_shots(checker, 'FewShotFGVC', ann_file, entries, shot, num_classes)


def _check_shots(checker: Checker, owner: str, ann_file: str, entries, shot: int,
                 num_classes: int) -> None:
    """A k-shot list has k images of every class."""
    counts = Counter(label for _, label, _ in entries)
    wrong = [(c, counts.get(c, 0)) for c in range(num_classes) if counts.get(c, 0) != shot]
    if wrong:
        shown = ', '.join(f'class {c}: {n}' for c, n in wrong[:10])
        more = f' (and {len(wrong) - 10} more)' if len(wrong) > 10 else ''
        checker.problem(f'{owner}: {osp.abspath(ann_file)} should list {shot} images of each '
                        f'of the {num_classes} classes; {shown}{more}.')


def check_dg(checker: Checker, root: str, names: Optional[List[str]], shots: List[int],
             seeds: List[int]) -> None:
    """The ImageNet 16-shot train lists and every target's test list.

    Args:
        checker (Checker): Collects the problems and the images to decode.
        root (str): The data root.
        names (list[str], optional): Only these targets; None for all.
        shots (list[int]): ImageNet train lists ``num_shot_<k>`` to check.
        seeds (list[int]): Their seeds.
    """
    targets = [canonical_dg_name(n) for n in names] if names else list(DG_TARGETS)
    for name in targets:
        print(f'Domain generalization {name}:')
        if name not in DG_TARGETS:
            checker.problem(f'DomainGeneralization: unknown dataset {name!r}; known are '
                            f'{", ".join(DG_TARGETS)}.')
            continue
        splits = ['test'] + (['train'] if name == 'imagenet' else [])
        for split in splits:
            image_root = osp.join(root, dg_image_root(name, split))
            if not osp.isdir(image_root):
                checker.problem(f'DomainGeneralization: image folder {osp.abspath(image_root)} '
                                'does not exist.')
                continue
            if split == 'test':
                entries = checker.split_file('DomainGeneralization',
                                             osp.join(root, dg_split_file(name, 'test')),
                                             image_root, 1000)
                if entries and name in DG_SUBSET_TARGETS:
                    print(f'    {name} covers {len({e[1] for e in entries})} of the 1000 '
                          'classes (scored over them and over all 1000).')
                continue
            for shot in shots:
                for seed in seeds:
                    ann_file = osp.join(root, dg_split_file(name, 'train', shot, seed))
                    entries = checker.split_file('DomainGeneralization', ann_file, image_root,
                                                 1000)
                    if entries is not None:
                        _check_shots(checker, 'DomainGeneralization', ann_file, entries, shot,
                                     1000)


def check_dense(checker: Checker, root: str, names: Optional[List[str]]) -> None:
    """The dense-scenes folder (``check_dense_scenes``: COCO files, label maps
    and their sha256s).

    Args:
        checker (Checker): Collects the problems and the images to decode.
        root (str): The data root.
        names (list[str], optional): Only these splits; None for all.
    """
    splits = names or list(DENSE_SCENES_SPLITS)
    unknown = [s for s in splits if s not in DENSE_SCENES_SPLITS]
    if unknown:
        checker.problem(f'dense-scenes: unknown split(s) {", ".join(unknown)}; the splits are '
                        f'{", ".join(DENSE_SCENES_SPLITS)}.')
        splits = [s for s in splits if s in DENSE_SCENES_SPLITS]
    print(f'Dense scenes {", ".join(splits)}:')
    problems = check_dense_scenes(root, splits)
    for split in splits:
        ann_file = osp.join(root, 'annotations', f'instances_{split}.json')
        img_dir = osp.join(root, 'img_dir', split)
        if osp.isdir(img_dir):
            num = sum(name.endswith('.png') for name in os.listdir(img_dir))
            checker.checked_elsewhere += num
            print(f'  img_dir/{split}: {num} images' + (
                f', {osp.relpath(ann_file, root)}: {_count_annotations(ann_file)} objects'
                if osp.isfile(ann_file) else ''))
    for msg in problems:
        checker.problem(msg)
    if problems:
        # The fix is the same for all of them.
        print(f'  {regenerate_hint(root)}')


def _count_annotations(ann_file: str) -> str:
    try:
        with open(ann_file, encoding='utf-8') as f:
            return str(len(json.load(f)['annotations']))
    except (OSError, ValueError, KeyError, TypeError):
        return '?'


def check_data_root(suite: str,
                    data_root: str,
                    names: Optional[List[str]] = None,
                    shots: Optional[List[int]] = None,
                    seeds: Sequence[int] = FEW_SHOT_SEEDS,
                    verify: bool = True,
                    workers: int = 8) -> List[str]:
    """Check the data root of one protocol and print what was found.

    Progress and every problem are printed as they are found, then a
    summary (all problems again, or the number of images listed).

    Args:
        suite (str): One of ``SUITES`` or a ``SUITE_ALIASES`` name.
        data_root (str): The dataset root of the suite (an existing folder).
        names (list[str], optional): Only these tasks / datasets / splits.
            Defaults to all of the suite.
        shots (list[int], optional): Train lists to check; defaults to
            ``FEW_SHOT_SHOTS`` for few-shot and ``[16]`` for domain
            generalization.
        seeds (Sequence[int]): Seeds of the train lists. Defaults to 0 1 2.
        verify (bool): Decode every listed image with PIL. Defaults to True.
        workers (int): Threads decoding images. Defaults to 8.

    Returns:
        list[str]: The problems, each naming its file (and line); empty when
        the root is ready for training.
    """
    suite = SUITE_ALIASES.get(suite, suite)
    if suite not in SUITES:
        raise ValueError(f'unknown suite {suite!r}; the suites are {", ".join(SUITES)} '
                         f'(or {", ".join(SUITE_ALIASES)})')
    seeds = list(seeds)
    checker = Checker(data_root, verify=verify, workers=workers)
    if suite == 'vtab':
        check_vtab(checker, data_root, names)
    elif suite == 'few-shot':
        check_few_shot(checker, data_root, names, shots or list(FEW_SHOT_SHOTS), seeds)
    elif suite == 'dense-scenes':
        check_dense(checker, data_root, names)
    else:
        check_dg(checker, data_root, names, shots or [16], seeds)
    checker.verify_images()
    if checker.problems:
        print(f'\n{len(checker.problems)} problem(s) in {data_root}:')
        for msg in checker.problems:
            print(f'  {msg}')
    else:
        print(f'\n{data_root}: no problems '
              f'({len(checker.images) + checker.checked_elsewhere} images listed).')
    return checker.problems
