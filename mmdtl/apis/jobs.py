"""Train and test a config from Python, as ``tools/train.py`` and
``tools/test.py`` do (the tools call these)."""
from typing import Optional, Union

from mmengine.config import Config
from mmengine.evaluator import DumpResults
from mmengine.runner import Runner

import mmdtl  # noqa: F401  (registers DTL models, datasets, hooks)
from mmdtl.engine.launch import (
    LaunchError,
    build_runner,
    config_name,
    load_config,
    prepare_test_config,
    prepare_train_config,
)
from mmdtl.utils import register_safe_globals

ConfigType = Union[str, Config]


def train(config: ConfigType,
          work_dir: Optional[str] = None,
          cfg_options: Optional[dict] = None,
          resume: Union[bool, str] = False,
          amp: bool = False,
          no_validate: bool = False,
          auto_scale_lr: bool = False,
          launcher: str = 'none') -> Runner:
    """Train a config (mmpretrain, mmdet or mmseg scope).

    The keyword arguments are the options of ``tools/train.py``. A config
    with a top-level ``global_batch_size`` keeps that global batch on any
    number of processes (see :func:`mmdtl.engine.launch.setup_batch`); AMP
    and fp16 evaluation fall back to fp32 where there is no GPU.

    Args:
        config (str | Config): A config file or a config read already (a
            copy is used).
        work_dir (str, optional): Where logs and checkpoints go. Defaults to
            the config's ``work_dir``, else ``./work_dirs/<config name>``.
        cfg_options (dict, optional): Settings to override, e.g.
            ``{'train_cfg.max_epochs': 2}`` (``--cfg-options``).
        resume (bool | str): True resumes from the latest checkpoint of the
            work directory, a path from that checkpoint. Defaults to False.
        amp (bool): Automatic mixed precision (GPU only). Defaults to False.
        no_validate (bool): Do not evaluate during training.
        auto_scale_lr (bool): Keep the per-process batch of the config and
            scale the learning rate linearly by the global batch.
        launcher (str): ``'none'`` (one process), ``'pytorch'``
            (torchrun), ``'slurm'`` or ``'mpi'``. A process group started
            here stays for the next call;
            :func:`mmdtl.engine.launch.finish_distributed` ends it.

    Returns:
        Runner: mmengine's Runner after training (``runner.model``,
        ``runner.work_dir``, ``runner.iter``).

    Raises:
        LaunchError: the config or an argument cannot run as asked.
        TrunkMismatchError, TrunkNotLoadedError, NonFiniteLossError, ...:
            see :data:`mmdtl.engine.launch.TRAIN_ERRORS`.
    """
    # Weights-only loading that can resume mmengine checkpoints (explicit,
    # as mmdet/mmseg configs may not import mmdtl).
    register_safe_globals()
    cfg = load_config(config, cfg_options)
    notes = []
    batch_line = prepare_train_config(
        cfg, config_name(config), notes, work_dir=work_dir, resume=resume, amp=amp,
        no_validate=no_validate, auto_scale_lr=auto_scale_lr, cfg_options=cfg_options,
        launcher=launcher)
    runner = build_runner(cfg, notes, batch_line)
    runner.train()
    return runner


def test(config: ConfigType,
         checkpoint: str,
         work_dir: Optional[str] = None,
         cfg_options: Optional[dict] = None,
         out: Optional[str] = None,
         show_dir: Optional[str] = None,
         launcher: str = 'none') -> dict:
    """Evaluate a checkpoint on a config's test set.

    The keyword arguments are the options of ``tools/test.py``.

    Args:
        config (str | Config): A config file or a config read already.
        checkpoint (str): The checkpoint to evaluate (path or URL).
        work_dir (str, optional): Where logs go. Defaults to the config's
            ``work_dir``, else ``./work_dirs/<config name>``.
        cfg_options (dict, optional): Settings to override, e.g.
            ``{'test_dataloader.batch_size': 8}``.
        out (str, optional): Dump the raw predictions to this pickle file
            (``.pkl`` or ``.pickle``).
        show_dir (str, optional): Save images with drawn predictions here.
        launcher (str): As for :func:`train`.

    Returns:
        dict: The test metrics, e.g. ``{'accuracy/top1': 91.5}``.

    Raises:
        LaunchError: the config or an argument cannot run as asked.
        TrunkMismatchError, UntrainedCheckpointError, ...: see
            :data:`mmdtl.engine.launch.CHECKPOINT_ERRORS`.
    """
    if out is not None and not str(out).endswith(('.pkl', '.pickle')):
        raise LaunchError(f'--out must end with .pkl or .pickle, got {out!r}')
    register_safe_globals()
    cfg = load_config(config, cfg_options)
    notes = []
    prepare_test_config(cfg, config_name(config), checkpoint, notes, work_dir=work_dir,
                        show_dir=show_dir, launcher=launcher)
    runner = build_runner(cfg, notes, training=False)
    if out is not None:
        runner.test_evaluator.metrics.append(DumpResults(out_file_path=str(out)))
    return runner.test()


# Not a test function when a test module imports it.
test.__test__ = False
