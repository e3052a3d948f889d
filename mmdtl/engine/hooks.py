"""Hooks of mmdtl."""
import os
import os.path as osp
import re
import time
from collections import deque
from collections.abc import Mapping
from typing import Any, Dict, Optional

import torch
from mmengine.dist import all_reduce, get_world_size, master_only
from mmengine.hooks import CheckpointHook, Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS as ROOT_HOOKS
from mmengine.runner import EpochBasedTrainLoop
from mmpretrain.registry import HOOKS

from mmdtl.utils.trunk_keys import (
    UntrainedCheckpointError,
    check_trunks_loaded,
    nonfinite_tensors,
    untrained_in_checkpoint,
)

from .task_checkpoint import check_frozen_backbone, read_task_file, save_task_checkpoint


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


class NonFiniteLossError(RuntimeError):
    """Training stopped: the loss, or the weights about to be saved, are not
    finite (NaN or inf)."""


def _examples(items, limit: int = 3) -> str:
    return ', '.join(items[:limit]) + (', ...' if len(items) > limit else '')


def _all_finite(value: Any) -> bool:
    """Whether every tensor in ``value`` (nested tuples/lists/dicts) is finite."""
    if torch.is_tensor(value):
        return not value.is_floating_point() or bool(torch.isfinite(value).all())
    if isinstance(value, Mapping):
        return all(_all_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_all_finite(v) for v in value)
    return True


def locate_nonfinite(model, data_batch) -> str:
    """Where a non-finite loss first appears for ``data_batch``, from one
    forward without gradients: the inputs (after the data preprocessor), the
    frozen weights, the frozen trunk's output (side network switched off),
    else the trained part (side network, neck, head or loss).

    Args:
        model (nn.Module): The model (a wrapper is unwrapped).
        data_batch: The batch of the failing iteration.

    Returns:
        str: One clause for the stop line.
    """
    model = model.module if is_model_wrapper(model) else model
    was_training = model.training
    try:
        with torch.no_grad():
            raw = data_batch.get('inputs') if isinstance(data_batch, Mapping) else None
            if raw is not None and not _all_finite(raw):
                return 'first non-finite: the images themselves (before the data preprocessor)'
            data = model.data_preprocessor(data_batch, True)
            inputs = data['inputs'] if isinstance(data, Mapping) else data[0]
            if not _all_finite(inputs):
                std = getattr(model.data_preprocessor, 'std', None)
                zero = torch.is_tensor(std) and bool((std == 0).any())
                return ('first non-finite: the inputs after model.data_preprocessor'
                        + (' (its std has a 0: a division by zero)' if zero else ''))
            params = dict(model.named_parameters())
            frozen = {n: p for n, p in params.items() if not p.requires_grad}
            frozen.update(model.named_buffers())
            bad = nonfinite_tensors(frozen)
            if bad:
                return (f'first non-finite: {len(bad)} frozen tensor(s) of the model '
                        f'({_examples(bad)}); they came with the weights it was loaded from')
            backbone = getattr(model, 'backbone', None)
            csn = getattr(backbone, 'csn', None)
            trunk_frozen = backbone is not None and not any(
                p.requires_grad for n, p in backbone.named_parameters()
                if not n.startswith('csn.'))
            if trunk_frozen:
                model.eval()  # no dropout, no statistics updated
                # The side network zeroed adds nothing: the trunk alone.
                saved = {n: p.detach().clone() for n, p in csn.named_parameters()} \
                    if csn is not None else {}
                try:
                    for _, p in (csn.named_parameters() if csn is not None else ()):
                        p.data.zero_()
                    out = backbone(inputs)
                finally:
                    for n, p in (csn.named_parameters() if csn is not None else ()):
                        p.data.copy_(saved[n])
                if not _all_finite(out):
                    return ('first non-finite: the frozen trunk\'s output for this batch '
                            '(its inputs and weights are finite: an overflow, e.g. in fp16?)')
                return ('the inputs, the frozen trunk and its output are finite: the side '
                        'network, neck, head or loss made it non-finite (too high a learning '
                        'rate? try a lower lr or optim_wrapper.clip_grad)')
            return ('the inputs and the frozen tensors are finite: the trained weights or the '
                    'loss made it non-finite (too high a learning rate? try a lower lr or '
                    'optim_wrapper.clip_grad)')
    except Exception as e:  # the stop line matters more than the diagnosis
        return f'where it first appeared is unknown ({type(e).__name__}: {e})'
    finally:
        model.train(was_training)


@ROOT_HOOKS.register_module()
class NonFiniteLossHook(Hook):
    """Stop training at the first non-finite loss, before a checkpoint of
    its weights is written.

    mmengine trains on when the loss becomes NaN or inf: every later step is
    NaN, the run exits 0, and its checkpoints (overwriting the good ones
    with ``max_keep_ckpts``) hold non-finite weights. This hook checks the
    loss of every training iteration (after the logger, before the
    checkpoint hook) and the trainable weights before every checkpoint is
    saved. The first non-finite value raises :class:`NonFiniteLossError`
    with one line: the iteration, the epoch, the loss and where the
    non-finite value first appears for that batch (one more forward, see
    :func:`locate_nonfinite`). ``tools/train.py`` prints that line and exits
    with status 1. Under several processes every rank stops at the same
    iteration.

    ``configs/_base_/default_runtime.py`` registers it as
    ``default_hooks.nonfinite_loss``, and ``tools/train.py`` adds it to
    configs that lack it (mmdet, mmseg). Registered in mmengine's root
    ``HOOKS`` so configs of any scope can use it.

    Args:
        stop (bool): Stop at the first non-finite loss. False keeps
            mmengine's behaviour (training goes on) and only logs one
            warning line at the first one. Defaults to True.
    """

    # After LoggerHook (BELOW_NORMAL: the iteration is logged), before
    # CheckpointHook (VERY_LOW).
    priority = 'LOW'

    def __init__(self, stop: bool = True):
        self.stop = stop
        self._warned = False

    @staticmethod
    def _losses(outputs) -> Dict[str, torch.Tensor]:
        if not isinstance(outputs, Mapping):
            return {}
        return {k: v for k, v in outputs.items()
                if torch.is_tensor(v) and v.is_floating_point() and 'loss' in k}

    @staticmethod
    def _last_checkpoint(runner) -> str:
        # `last_checkpoint` names a complete file (the message hub's
        # 'last_ckpt' already names the one being saved).
        path = osp.join(runner.work_dir, 'last_checkpoint')
        last = None
        if osp.isfile(path):
            with open(path, encoding='utf-8') as f:
                last = f.read().strip()
        if last and osp.isfile(last):
            return f'the last checkpoint is {last}'
        return 'no checkpoint has been written yet'

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        losses = self._losses(outputs)
        if not losses:
            return
        total = losses.get('loss', next(iter(losses.values())))
        bad = torch.tensor(0. if bool(torch.isfinite(total).all()) else 1.,
                           device=total.device)
        if get_world_size() > 1:  # every rank stops at the same iteration
            all_reduce(bad, op='max')
        if not bad.item():
            return
        values = ', '.join(f'{k}={v.detach().float().mean().item():.4g}'
                           for k, v in losses.items())
        if isinstance(runner.train_loop, EpochBasedTrainLoop):
            try:
                of = f' of {len(runner.train_dataloader)}'
            except TypeError:
                of = ''
            when = (f'iteration {runner.iter + 1} (epoch {runner.epoch + 1}, batch '
                    f'{batch_idx + 1}{of})')
        else:
            when = f'iteration {runner.iter + 1}'
        if not bool(torch.isfinite(total).all()):
            where = locate_nonfinite(runner.model, data_batch)
        else:
            where = 'another process had it'
        if not self.stop:
            if not self._warned:
                runner.logger.warning(
                    f'The training loss is not finite at {when}: {values}; {where}. '
                    f'Training goes on (default_hooks.nonfinite_loss.stop=False).')
                self._warned = True
            return
        raise NonFiniteLossError(
            f'Training stopped: the loss is not finite at {when}: {values}; {where}. '
            f'No checkpoint of these weights was written; {self._last_checkpoint(runner)}. '
            f'To train on as mmengine does, set default_hooks.nonfinite_loss.stop=False.')

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if not self.stop:
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        bad = nonfinite_tensors({n: p.detach() for n, p in model.named_parameters()
                                 if p.requires_grad})
        if not bad:
            return
        meta = checkpoint.get('meta') or {}
        at = (f'epoch {meta["epoch"]}' if isinstance(runner.train_loop, EpochBasedTrainLoop)
              and 'epoch' in meta else f'iteration {meta.get("iter", runner.iter)}')
        raise NonFiniteLossError(
            f'Training stopped before saving the checkpoint of {at}: {len(bad)} trained '
            f'tensor(s) hold non-finite values ({_examples(bad)}) although every loss was '
            f'finite (a gradient overflowed? try optim_wrapper.clip_grad). It was not '
            f'written; {self._last_checkpoint(runner)}. To save it anyway, set '
            f'default_hooks.nonfinite_loss.stop=False.')


@HOOKS.register_module()
class TaskCheckpointHook(Hook):
    """Write a small task file next to every regular checkpoint.

    DTL leaves the backbone untouched, so a task is fully described by its
    side network and head (see :func:`save_task_checkpoint`). This hook
    writes ``task_epoch_{n}.pth`` (or ``task_iter_{n}.pth``) whenever the
    run's :class:`~mmengine.hooks.CheckpointHook` saves, and
    ``task_final.pth`` after training. Add it with::

        custom_hooks = [dict(type='TaskCheckpointHook')]

    Task files stay consistent with the checkpoints across a kill and
    ``--resume``: on resuming, the task file of the checkpoint resumed from
    is written if a kill left it out (missing or cut short), and the task
    files already in the folder count towards ``max_keep_ckpts``.

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
        if runner.iter > 0:  # resumed (before_train runs after the resume)
            self._catch_up(runner, ckpt_hook)

    def _periodic_name(self, step: int) -> str:
        return f'task_{"epoch" if self.by_epoch else "iter"}_{step}.pth'

    def _catch_up(self, runner, ckpt_hook) -> None:
        """After a resume: the kept files, and the task file of the
        checkpoint resumed from if a kill left it out."""
        step = runner.epoch if self.by_epoch else runner.iter
        pattern = re.compile(r'task_(?:epoch|iter)_(\d+)\.pth')
        names = os.listdir(self.out_dir) if osp.isdir(self.out_dir) else []
        steps = sorted(int(m.group(1)) for m in map(pattern.fullmatch, names)
                       if m and m.group(0) == self._periodic_name(int(m.group(1))))
        self._kept.extend(osp.join(self.out_dir, self._periodic_name(s))
                          for s in steps if s <= step)
        # Written at `step` by this hook? (`every_n_*`/`is_last_*` as at save
        # time, when the counter was one lower.)
        due = (self.interval > 0 and step - self.save_begin >= 0
               and (step - self.save_begin) % self.interval == 0) or (
                   self.save_last and step == (runner.max_epochs if self.by_epoch
                                               else runner.max_iters))
        if not due or ckpt_hook is None:
            return
        checkpoint = osp.join(ckpt_hook.out_dir, ckpt_hook.filename_tmpl.format(step))
        path = osp.join(self.out_dir, self._periodic_name(step))
        if not osp.isfile(checkpoint) or self._readable(path):
            return
        runner.logger.warning(f'{path} is missing or unreadable although {checkpoint} was '
                              f'saved (a kill between the two?): writing it from the '
                              f'resumed weights.')
        counters = dict(epoch=runner.epoch - 1) if self.by_epoch else \
            dict(iteration=runner.iter - 1)
        self._save(runner, osp.basename(path), periodic=True, **counters)

    @staticmethod
    def _readable(path: str) -> bool:
        if not osp.isfile(path):
            return False
        try:
            read_task_file(path)
        except Exception:  # cut short, or not a task file
            return False
        return True

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
    def _save(self, runner, filename: str, periodic: bool, epoch: Optional[int] = None,
              iteration: Optional[int] = None) -> None:
        path = osp.join(self.out_dir, filename)
        dataset = getattr(runner.train_dataloader, 'dataset', None)
        classes = getattr(dataset, 'metainfo', {}).get('classes')
        # The work dir names the task (MultiTaskDTL's default task name);
        # epoch/iter as the hook sees them after that epoch/iteration.
        meta = dict(task_name=osp.basename(osp.normpath(runner.work_dir)),
                    epoch=runner.epoch if epoch is None else epoch,
                    iter=runner.iter if iteration is None else iteration,
                    work_dir=runner.work_dir,
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
