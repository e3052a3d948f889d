"""Hooks of mmdtl."""
import os
import os.path as osp
import time
from collections import deque
from collections.abc import Mapping
from typing import Any, Optional

from mmengine.dist import master_only
from mmengine.hooks import CheckpointHook, Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS as ROOT_HOOKS
from mmpretrain.registry import HOOKS

from mmdtl.utils.trunk_keys import (
    UntrainedCheckpointError,
    check_trunks_loaded,
    untrained_in_checkpoint,
)

from .task_checkpoint import check_frozen_backbone, save_task_checkpoint


@ROOT_HOOKS.register_module()
class TrunkCheckHook(Hook):
    """Refuse to train a frozen DTL trunk that was never loaded.

    A DTL backbone's trunk never changes, so training it from its random
    initialisation silently gives a useless model. When training starts
    (after ``init_cfg``, ``load_from`` and resuming have run) this hook
    raises :class:`~mmdtl.utils.TrunkNotLoadedError` for every frozen DTL
    backbone that no checkpoint was loaded into, unless the backbone was
    built with ``allow_random_trunk=True``. (Checkpoints that do not fit the
    trunk are refused by the backbone itself, whatever loads them.)

    When testing (``tools/test.py CKPT``), it also refuses a checkpoint that
    lacks the trained tensors (side network, head) or has them in another
    shape, e.g. the pre-trained classifier instead of the fine-tuned one:
    :class:`~mmdtl.utils.trunk_keys.UntrainedCheckpointError`.

    ``configs/_base_/default_runtime.py`` registers it as
    ``default_hooks.trunk_check``, and ``tools/train.py`` / ``tools/test.py``
    add it to configs that lack it (e.g. mmdet configs). Registered in
    mmengine's root ``HOOKS`` so configs of any scope can use it.

    Args:
        check_test_checkpoint (bool): Refuse testing a checkpoint without
            the trained tensors. Defaults to True.
    """

    priority = 'VERY_HIGH'

    def __init__(self, check_test_checkpoint: bool = True):
        self.check_test_checkpoint = check_test_checkpoint
        self._untrained: Optional[str] = None

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        # Called before the checkpoint is loaded into the model.
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        self._untrained = untrained_in_checkpoint(model, checkpoint)

    def before_train(self, runner) -> None:
        check_trunks_loaded(runner.model)
        self._untrained = None  # a later test evaluates what training wrote

    def before_test(self, runner) -> None:
        if self.check_test_checkpoint and self._untrained:
            raise UntrainedCheckpointError(self._untrained)


@HOOKS.register_module()
class TaskCheckpointHook(Hook):
    """Write a small task file next to every regular checkpoint.

    DTL leaves the backbone untouched, so a task is fully described by its
    side network and head (see :func:`save_task_checkpoint`). This hook
    writes ``task_epoch_{n}.pth`` (or ``task_iter_{n}.pth``) whenever the
    run's :class:`~mmengine.hooks.CheckpointHook` saves, and
    ``task_final.pth`` after training. Add it with::

        custom_hooks = [dict(type='TaskCheckpointHook')]

    Args:
        interval (int, optional): Saving period; -1 disables the periodic
            files. Defaults to None: that of the run's ``CheckpointHook``
            (no periodic files without one).
        by_epoch (bool, optional): Epoch- or iteration-based period.
            Defaults to None: that of the ``CheckpointHook``, else True.
        save_begin (int, optional): First epoch/iteration that may save.
            Defaults to None: that of the ``CheckpointHook``, else 0.
        save_last (bool, optional): Also save at the last epoch/iteration.
            Defaults to None: that of the ``CheckpointHook``, else True.
        max_keep_ckpts (int, optional): Keep only the newest periodic task
            files; -1 keeps all. Defaults to None: that of the
            ``CheckpointHook``, else -1.
        out_dir (str, optional): Folder of the task files. Defaults to None:
            the ``CheckpointHook``'s folder, else the work dir.
        final_name (str): File written after training. Defaults to
            ``'task_final.pth'``.
    """

    # After the CheckpointHook (also VERY_LOW, registered before custom hooks),
    # so its folder is known and the task file lands after the checkpoint.
    priority = 'VERY_LOW'

    def __init__(self,
                 interval: Optional[int] = None,
                 by_epoch: Optional[bool] = None,
                 save_begin: Optional[int] = None,
                 save_last: Optional[bool] = None,
                 max_keep_ckpts: Optional[int] = None,
                 out_dir: Optional[str] = None,
                 final_name: str = 'task_final.pth'):
        self.interval = interval
        self.by_epoch = by_epoch
        self.save_begin = save_begin
        self.save_last = save_last
        self.max_keep_ckpts = max_keep_ckpts
        self.out_dir = out_dir
        self.final_name = final_name

    def before_train(self, runner) -> None:
        ckpt_hook = next((h for h in runner.hooks if isinstance(h, CheckpointHook)), None)

        def follow(value: Any, name: str, default: Any) -> Any:
            if value is not None:
                return value
            return getattr(ckpt_hook, name, default) if ckpt_hook is not None else default

        self.interval = follow(self.interval, 'interval', -1)
        self.by_epoch = follow(self.by_epoch, 'by_epoch', True)
        self.save_begin = follow(self.save_begin, 'save_begin', 0)
        self.save_last = follow(self.save_last, 'save_last', True)
        self.max_keep_ckpts = follow(self.max_keep_ckpts, 'max_keep_ckpts', -1)
        if self.out_dir is None:
            # CheckpointHook resolves its out_dir in its own before_train (run first).
            out_dir = getattr(ckpt_hook, 'out_dir', None)
            self.out_dir = out_dir if isinstance(out_dir, str) else runner.work_dir
        self._kept: deque = deque()

        # Fail now rather than after the first epoch.
        check_frozen_backbone(self._model(runner))
        # The configs rebuild the head and record the backbone in the task file.
        model_cfg = runner.cfg.get('model') if runner.cfg is not None else None
        model_cfg = model_cfg if isinstance(model_cfg, Mapping) else {}
        self._backbone_cfg = model_cfg.get('backbone')
        self._head_cfg = model_cfg.get('head')
        self._neck_cfg = model_cfg.get('neck')

    @staticmethod
    def _model(runner):
        return runner.model.module if is_model_wrapper(runner.model) else runner.model

    def after_train_epoch(self, runner) -> None:
        if not self.by_epoch or self.interval is None:
            return
        if (self.interval > 0 and self.every_n_epochs(runner, self.interval, self.save_begin)) \
                or (self.save_last and self.is_last_train_epoch(runner)):
            self._save(runner, f'task_epoch_{runner.epoch + 1}.pth', periodic=True)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self.by_epoch or self.interval is None:
            return
        if (self.interval > 0
                and self.every_n_train_iters(runner, self.interval, self.save_begin)) \
                or (self.save_last and self.is_last_train_iter(runner)):
            self._save(runner, f'task_iter_{runner.iter + 1}.pth', periodic=True)

    def after_train(self, runner) -> None:
        self._save(runner, self.final_name, periodic=False)

    @master_only
    def _save(self, runner, filename: str, periodic: bool) -> None:
        path = osp.join(self.out_dir, filename)
        dataset = getattr(runner.train_dataloader, 'dataset', None)
        classes = getattr(dataset, 'metainfo', {}).get('classes')
        # The work dir names the task (MultiTaskDTL's default task name).
        meta = dict(task_name=osp.basename(osp.normpath(runner.work_dir)),
                    epoch=runner.epoch, iter=runner.iter, work_dir=runner.work_dir,
                    experiment_name=runner.experiment_name,
                    time=time.strftime('%Y-%m-%d %H:%M:%S'))
        if runner.cfg is not None and runner.cfg.filename:
            meta['config'] = runner.cfg.filename
        save_task_checkpoint(
            self._model(runner), path, class_names=classes, meta=meta,
            backbone_cfg=self._backbone_cfg, head_cfg=self._head_cfg, neck_cfg=self._neck_cfg)
        runner.logger.info(f'Saved task file (side network + head) to {path}')
        if periodic and self.max_keep_ckpts > 0:
            if path not in self._kept:
                self._kept.append(path)
            while len(self._kept) > self.max_keep_ckpts:
                old = self._kept.popleft()
                if osp.isfile(old):
                    os.remove(old)
