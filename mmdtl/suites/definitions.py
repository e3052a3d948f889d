"""The suites of ``tools/run_suite.py`` and the runs each expands to.

A suite is a protocol of the paper (VTAB-1k, few-shot, domain
generalization), the demo's mini VTAB-1k, or an ablation around DTL+: a glob
of configs and a kind that says how a config becomes runs (one run; one per
shot and seed; one per ablation setting and seed) and how their metrics make
a table (:mod:`mmdtl.suites.collect`).
"""
import glob
import os.path as osp
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from mmdtl.datasets.few_shot import FEW_SHOT_SHOTS, few_shot_run_dir
from mmdtl.datasets.vtab import VTAB1K_GROUPS, VTAB1K_TASKS
from mmdtl.utils.cfg_options import parse_cfg_options

from .ablation import AblationSetting, ablation_settings

# The repository: the suites' config globs and the tools are relative to it.
REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

# suite -> (kind, config glob relative to the repository)
SUITES = OrderedDict([
    ('vtab-vit-dtl', ('vtab', 'configs/dtl/vtab/vit-b_dtl_*.py')),
    ('vtab-vit-dtl+', ('vtab', 'configs/dtl/vtab/vit-b_dtl+_*.py')),
    ('vtab-swin-dtl', ('vtab', 'configs/dtl/vtab/swin-b_dtl_*.py')),
    ('vtab-swin-dtl+', ('vtab', 'configs/dtl/vtab/swin-b_dtl+_*.py')),
    ('few-shot', ('few-shot', 'configs/dtl/few_shot/*.py')),
    # the paper's protocol: one model per target (each with its own lr)
    ('domain-generalization', ('dg', 'configs/dtl/domain_generalization/*.py')),
    # option: one model per method, tested on all five targets at once
    ('domain-generalization-all-targets',
     ('dg', 'configs/dtl/domain_generalization/all_targets/*.py')),
    # the demo's mini VTAB-1k, every method (mmdtl.demo.transfer runs the
    # same configs in one process, with memory meters, seeds and a plot)
    ('mini-vtab', ('mini-vtab', 'configs/demo/vit-demo_*.py')),
    # DTL+ on random trunks of every architecture (ViT, DeiT3, BEiT, ConvNeXt):
    # each trains through the one runner; the ViT row is the demo's control
    ('mini-vtab-trunks', ('mini-vtab', 'configs/demo/*-demo_dtl+random-trunk_*.py')),
    # side-network ablations (M, rank, DWConv kernel, taps) around DTL+, every
    # setting on every task and --seeds: the demo's mini VTAB-1k (CPU) and
    # VTAB-1k with the released ViT-B recipe (GPU)
    ('ablation-mini-vtab', ('ablation', 'configs/demo/vit-demo_dtl+_*.py')),
    ('ablation-vtab-vit', ('ablation', 'configs/dtl/vtab/vit-b_dtl+_*.py')),
])
# ablation suite -> its benchmark and how its memory columns are counted:
# 'real' runs one CPU step (exact), 'fake' counts on fake tensors (no compute)
ABLATION_MEMORY = {'ablation-mini-vtab': 'real', 'ablation-vtab-vit': 'fake'}
# VTAB-1k validation protocol: train on train800, evaluate on val200.
VAL_MODE_OPTIONS = [
    'train_dataloader.dataset.split=train800',
    'val_dataloader.dataset.split=val200',
    'test_dataloader.dataset.split=val200',
]
TOP1 = 'accuracy/top1'
RESULTS = 'results.json'
TRAIN_DONE = 'train_done.json'


class SuiteError(ValueError):
    """A suite, its configs or its devices cannot run as asked; the message
    names the option at fault (``tools/run_suite.py`` prints it and exits)."""


@dataclass
class Run:
    """One training + test of a config (for few-shot suites: one shot and seed).

    Args:
        config (str): The config file.
        stem (str): Its name without ``.py``.
        method (str): The table's row (column for DG), e.g. ``'vit-b_dtl+'``.
        dataset (str): The VTAB task, the few-shot dataset, or the DG test
            set(s).
        work_dir (str): Given to the tools.
        run_dir (str): Where its checkpoints and ``results.json`` are.
        uses_best (bool): The test takes the best-validation checkpoint.
        shot (int, optional): Few-shot / DG shot.
        seed (int, optional): Few-shot / DG split seed, the ablation's seed.
        options (list[str]): ``--cfg-options`` of both tools.
        setting (str, optional): Ablation suites: the setting's name.
        test_is_val_at (int, optional): The epoch whose validation is the
            test (same loader; ablation suites): its metrics are read from the
            training log instead of running the test.
    """
    config: str
    stem: str
    method: str
    dataset: str
    work_dir: str
    run_dir: str
    uses_best: bool
    shot: Optional[int] = None
    seed: Optional[int] = None
    options: List[str] = field(default_factory=list)
    setting: Optional[str] = None
    test_is_val_at: Optional[int] = None

    @property
    def label(self) -> str:
        if self.setting is not None:
            return f'{self.stem} [{self.setting}] seed={self.seed}'
        extra = '' if self.shot is None else f' shot={self.shot} seed={self.seed}'
        return f'{self.stem}{extra}'


def split_stem(stem: str) -> Tuple[str, str]:
    """``'vit-b_dtl+_cifar'`` -> ``('vit-b_dtl+', 'cifar')``."""
    parts = stem.split('_', 2)
    if len(parts) == 3:
        return f'{parts[0]}_{parts[1]}', parts[2]
    return stem, stem


def suite_configs(suite: str, configs: Optional[Sequence[str]] = None) -> List[str]:
    """The suite's configs (VTAB in the order of the tables), or the given ones.

    Args:
        suite (str): A name of :data:`SUITES`.
        configs (Sequence[str], optional): Run these instead (``--configs``).
    """
    if configs:
        missing = [c for c in configs if not osp.isfile(c)]
        if missing:
            raise SuiteError(f'--configs: not found: {", ".join(missing)}')
        return [osp.abspath(c) for c in configs]
    kind, pattern = SUITES[suite]
    found = sorted(glob.glob(osp.join(REPO, pattern)))
    if kind == 'vtab':
        order = {task: i for i, task in enumerate(VTAB1K_TASKS)}
        found.sort(key=lambda p: order.get(split_stem(osp.basename(p)[:-3])[1], len(order)))
    if not found:
        raise SuiteError(f'No configs match {pattern} for suite {suite}.')
    return found


def suite_dir(work_root: str, suite: str, val: bool = False) -> str:
    """``<work_root>/<suite>[_val]``: the suite's runs and its tables."""
    return osp.join(work_root, suite + ('_val' if val else ''))


def plan_runs(suite: str, configs: List[str], work_root: str, shots, seeds, val: bool,
              user_options: List[str], data_root: Optional[str]) -> List[Run]:
    """Load every config once (with the options) and list its runs.

    Args:
        suite (str): A name of :data:`SUITES`.
        configs (list[str]): Its configs (:func:`suite_configs`).
        work_root (str): Runs go to ``<work_root>/<suite>[_val]/...``.
        shots (Sequence[int] | None): Few-shot / DG shots (None: the suite's).
        seeds (Sequence[int]): Few-shot / DG / ablation seeds.
        val (bool): The VTAB-1k validation protocol (train800 -> val200).
        user_options (list[str]): ``KEY=VALUE`` options of every run.
        data_root (str, optional): The data root of every dataloader.
    """
    from mmengine.config import Config

    kind = SUITES[suite][0]
    folder = suite_dir(work_root, suite, val)
    runs = []
    # an ablation's settings are those around the first config's side
    # network, the same for every task (whose own values make the base row)
    settings = suite_settings(configs) if kind == 'ablation' else []
    for path in configs:
        stem = osp.basename(path)[:-3]
        cfg = Config.fromfile(path)
        options = []
        if data_root:
            for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
                if cfg.get(loader) is not None:
                    options.append(f'{loader}.dataset.data_root={data_root}')
        if val:
            options += VAL_MODE_OPTIONS
        options += user_options
        cfg.merge_from_dict(parse_cfg_options(options))
        method, name = split_stem(stem)
        checkpoint_hook = (cfg.get('default_hooks') or {}).get('checkpoint') or {}
        uses_best = bool(checkpoint_hook.get('save_best'))
        work_dir = osp.join(folder, stem)
        if kind in ('vtab', 'mini-vtab'):
            runs.append(Run(path, stem, method, cfg.get('task', name), work_dir, work_dir,
                            uses_best, options=options))
            continue
        if kind == 'ablation':
            last_val_is_test = (not uses_best and cfg.get('val_dataloader') is not None
                                and cfg.val_dataloader == cfg.get('test_dataloader')
                                and cfg.get('val_evaluator') == cfg.get('test_evaluator')
                                and cfg.train_cfg.max_epochs % cfg.train_cfg.get(
                                    'val_interval', 1) == 0)
            for setting in settings:
                setting_dir = osp.join(folder, setting_folder(setting.name), stem)
                for seed in seeds:
                    run_dir = osp.join(setting_dir, f'seed{seed}')
                    runs.append(Run(path, stem, method, cfg.get('task', name), run_dir, run_dir,
                                    uses_best, seed=seed, setting=setting.name,
                                    options=options + setting.cfg_options() +
                                    [f'randomness.seed={seed}'],
                                    test_is_val_at=(cfg.train_cfg.max_epochs
                                                    if last_val_is_test else None)))
            continue
        dataset = cfg.get('dataset_name', name) if kind == 'few-shot' else dg_test_sets(cfg)
        run_shots = shots or ([cfg.get('shot', 16)] if kind == 'dg' else list(FEW_SHOT_SHOTS))
        for shot in run_shots:
            for seed in seeds:
                runs.append(Run(path, stem, method, dataset, work_dir,
                                few_shot_run_dir(work_dir, shot, seed), uses_best, shot, seed,
                                options + [f'shot={shot}', f'seed={seed}']))
    if kind == 'ablation':  # seed by seed: a partial suite has whole seeds
        runs.sort(key=lambda run: list(seeds).index(run.seed))
    return runs


def trunk_depth(backbone_cfg) -> int:
    """Number of blocks of a ViT-like backbone config (``arch`` a name of
    its class's ``arch_zoo`` or a dict with ``num_layers``)."""
    from mmpretrain.registry import MODELS

    arch = backbone_cfg.get('arch', 'base')
    if isinstance(arch, dict):
        return arch['num_layers']
    backbone_cls = MODELS.get(backbone_cfg['type'])
    zoo = getattr(backbone_cls, 'arch_zoo', {})
    for names, settings in zoo.items():
        if arch in (names if isinstance(names, (list, tuple)) else [names]):
            return settings['num_layers']
    raise SuiteError(f'ablation: cannot tell the depth of backbone arch {arch!r} '
                     f'({backbone_cfg["type"]}); give arch as a dict with num_layers')


def suite_settings(configs: Sequence[str]) -> List[AblationSetting]:
    """The ablation settings around the side network of a suite's configs
    (the first one's; every kernel is tried where the tasks' kernels differ,
    as the released VTAB-1k recipe's)."""
    from mmengine.config import Config

    import mmdtl  # noqa: F401  (registries)

    cfgs = [Config.fromfile(path) for path in configs]
    csn = cfgs[0].model.backbone.csn
    kernels = {cfg.model.backbone.csn.get('dwconv_kernel', 0) for cfg in cfgs}
    return ablation_settings(trunk_depth(cfgs[0].model.backbone), csn.start, csn.rank,
                             kernels.pop() if len(kernels) == 1 else None)


def setting_folder(name: str) -> str:
    """``'taps every 2'`` -> ``'taps-every-2'``: a run folder per setting."""
    return name.replace('=', '').replace(' ', '-')


def dg_test_sets(cfg) -> str:
    """The DG test set(s) of a config, comma-separated (``Run.dataset``)."""
    names = ((cfg.get('test_dataloader') or {}).get('dataset') or {}).get('name', 'imagenet')
    return names if isinstance(names, str) else ','.join(names)


def ablation_benchmark(suite: str) -> Tuple[List[str], Dict[str, List[str]]]:
    """The tasks and groups of an ablation suite's benchmark."""
    if SUITES[suite][1].startswith('configs/demo/'):
        from mmdtl.datasets.mini_vtab import MINI_VTAB_GROUPS, MINI_VTAB_TASKS
        return list(MINI_VTAB_TASKS), dict(MINI_VTAB_GROUPS)
    return list(VTAB1K_TASKS), dict(VTAB1K_GROUPS)
