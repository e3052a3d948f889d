"""timm's cosine learning-rate schedule with warm-up, as the DTL release steps it."""
import math

from mmengine.optim.scheduler.lr_scheduler import LRSchedulerMixin
from mmengine.optim.scheduler.param_scheduler import INF, _ParamScheduler
from mmpretrain.registry import PARAM_SCHEDULERS


def timm_cosine_lr(base_lr: float, t: int, t_initial: int, warmup_t: int,
                   warmup_lr_init: float, lr_min: float) -> float:
    """The learning rate of step ``t`` (0-based) of timm 0.5.4's
    ``CosineLRScheduler`` with one cycle (``cycle_limit=1``,
    ``warmup_prefix=False``, no noise).

    Args:
        base_lr (float): The optimizer's learning rate.
        t (int): The step (epoch for the released recipes), 0-based.
        t_initial (int): Length of the cosine cycle, warm-up included.
        warmup_t (int): Number of linear warm-up steps.
        warmup_lr_init (float): Absolute learning rate of step 0.
        lr_min (float): The floor of the cosine, kept after ``t_initial``.

    Returns:
        float: The learning rate.
    """
    if t < warmup_t:
        # timm's order of operations (a per-step increment), to the last bit
        return warmup_lr_init + t * ((base_lr - warmup_lr_init) / warmup_t)
    if t < t_initial:
        # The cosine counts from step 0, the warm-up steps included.
        return lr_min + 0.5 * (base_lr - lr_min) * (1 + math.cos(math.pi * t / t_initial))
    return lr_min


@PARAM_SCHEDULERS.register_module()
class TimmCosineLR(LRSchedulerMixin, _ParamScheduler):
    """Linear warm-up from an absolute learning rate, a cosine over
    ``t_initial`` steps that counts the warm-up steps, then ``lr_min``.

    This is timm 0.5.4's ``CosineLRScheduler(t_initial, lr_min, warmup_t,
    warmup_lr_init)`` as the DTL release uses it (stepped once per epoch,
    trained for ``t_initial + warmup_t`` epochs). Step ``t`` (0-based,
    counted from ``begin``) of a parameter group whose optimizer learning
    rate is ``lr`` runs at:

    - ``t < warmup_t``: ``warmup_lr_init + t * (lr - warmup_lr_init) / warmup_t``;
    - ``warmup_t <= t < t_initial``:
      ``lr_min + (lr - lr_min) * (1 + cos(pi * t / t_initial)) / 2``;
    - ``t >= t_initial``: ``lr_min``.

    ``lr`` is the optimizer's own (``initial_lr`` of the group), so the
    learning rate set by ``--cfg-options``, ``lr_per_shot`` or
    ``--auto-scale-lr`` is the one scheduled. Unlike mmengine's
    ``LinearLR``, the warm-up starts at the absolute ``warmup_lr_init``
    whatever ``lr`` is.

    Args:
        optimizer (Optimizer or OptimWrapper): The wrapped optimizer.
        t_initial (int): Length of the cosine cycle in steps, warm-up
            included. Defaults to 100.
        warmup_t (int): Number of warm-up steps. Defaults to 10.
        warmup_lr_init (float): Learning rate of the first step.
            Defaults to 1e-7.
        lr_min (float): Learning rate at the end of the cosine and after.
            Defaults to 1e-8.
        begin (int): Step at which the schedule starts. Defaults to 0.
        end (int): Step at which it stops updating. Defaults to INF (the
            Runner sets the end of training).
        last_step (int): The index of the last step, for resuming without a
            state dict. Defaults to -1.
        by_epoch (bool): Whether steps are epochs. Defaults to True.
        verbose (bool): Whether to print the value of each update.
            Defaults to False.
    """

    def __init__(self,
                 optimizer,
                 t_initial: int = 100,
                 warmup_t: int = 10,
                 warmup_lr_init: float = 1e-7,
                 lr_min: float = 1e-8,
                 begin: int = 0,
                 end: int = INF,
                 last_step: int = -1,
                 by_epoch: bool = True,
                 verbose: bool = False):
        name = type(self).__name__
        for key, value in (('t_initial', t_initial), ('warmup_t', warmup_t)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f'{name}: {key} must be an int >= 0, got {value!r}.')
        if t_initial < 1:
            raise ValueError(f'{name}: t_initial must be >= 1, got {t_initial}.')
        if warmup_lr_init < 0 or lr_min < 0:
            raise ValueError(f'{name}: warmup_lr_init and lr_min must be >= 0, got '
                             f'{warmup_lr_init!r} and {lr_min!r}.')
        self.t_initial = t_initial
        self.warmup_t = warmup_t
        self.warmup_lr_init = warmup_lr_init
        self.lr_min = lr_min
        super().__init__(optimizer, begin=begin, end=end, last_step=last_step,
                         by_epoch=by_epoch, verbose=verbose)

    @classmethod
    def build_iter_from_epoch(cls, *args, t_initial=100, warmup_t=10, begin=0, end=INF,
                              by_epoch=True, epoch_length=None, **kwargs):
        """The same schedule counted in iterations (``convert_to_iter_based``):
        timm's ``t_in_epochs=False`` with the lengths scaled by the epoch
        length."""
        if not by_epoch:
            raise ValueError(f'{cls.__name__}: only an epoch-based config (by_epoch=True) '
                             'can be converted to iterations.')
        if not epoch_length or epoch_length < 1:
            raise ValueError(f'{cls.__name__}: epoch_length must be a positive int, '
                             f'got {epoch_length!r}.')
        end = end if end == INF else int(end * epoch_length)
        return cls(*args, t_initial=t_initial * epoch_length, warmup_t=warmup_t * epoch_length,
                   begin=int(begin * epoch_length), end=end, by_epoch=False, **kwargs)

    def _get_value(self):
        """The closed form of step ``last_step`` for every parameter group."""
        return [
            timm_cosine_lr(base, self.last_step, self.t_initial, self.warmup_t,
                           self.warmup_lr_init, self.lr_min) for base in self.base_values
        ]
