"""Frozen trunk weights stored in the compute dtype of mixed precision.

Under AMP a frozen backbone's linear and conv weights are only ever used in
half precision: autocast rounds each fp32 weight to fp16/bf16 for every
matmul. Storing them in that dtype from the start halves the weights' memory
and also drops the per-op half copies that the suffix blocks would save for
backward (``dx = dy @ W`` needs ``W``). For a 1B-parameter trunk that is the
difference between 4.4 and 2.2 GB of weights.

:func:`store_frozen_weights` converts the frozen ``nn.Linear`` and
``nn.Conv{1,2,3}d`` modules (and subclasses, e.g. mmcv's ``Linear``) of a
backbone, weights and biases, except the side network ``csn``. Norms, the
position embedding, the cls token, layer scales, Swin's relative position
tables and the side network stay fp32. Since autocast casts both operands of
every linear and conv to its dtype anyway, and leaves every other op alone,

- under autocast in the storage dtype, logits and side-network gradients are
  bit-identical to those of the fp32-stored model: rounding a weight once at
  construction gives the values autocast rounds to at every call;
- outside autocast (fp32 evaluation) a converted module computes in its
  input's dtype with the weight cast up on the fly: exactly the fp32 model
  whose weights were rounded to the storage dtype, an approximation of the
  original fp32 model within that rounding.

Checkpoints, ``load_from``, resume and task files. The state dict holds the
weights as stored (half the bytes of an fp32 checkpoint). Loading any
checkpoint copies into the stored dtype: an fp32 pre-trained checkpoint
(``init_cfg``/``load_from``) is rounded once, exactly as autocast would round
it; a half checkpoint (resume) loads unchanged. The task-file fingerprint
(:func:`mmdtl.engine.backbone_fingerprint`) hashes the backbone tensors as
stored, dtype included: a half-stored trunk is a different backbone from its
fp32 original (their fp32 outputs differ), so a task file trained on one is
refused by the other with a :class:`BackboneMismatchError`, and a prefix
cache never serves features of the other. Build the model with the same
``frozen_weights_dtype`` to use such a file.
"""
from typing import Dict, Optional, Sequence, Type

import torch
import torch.nn as nn
import torch.nn.functional as F

FROZEN_WEIGHTS_DTYPES = {'bfloat16': torch.bfloat16, 'float16': torch.float16}
_CONVERTIBLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


class HalfStoredMixin:
    """A frozen linear/conv whose parameters are stored in half precision.

    Under autocast (and for inputs of the storage dtype) it is the original
    module; otherwise its weight and bias are cast to the input's dtype for
    the call, so fp32 inputs run the fp32 kernels.
    """
    _base: Type[nn.Module]

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight, self.bias
        if (input.dtype == weight.dtype or not input.is_floating_point()
                or torch.is_autocast_enabled(input.device.type)):
            return super().forward(input)
        weight = weight.to(input.dtype)
        bias = None if bias is None else bias.to(input.dtype)
        if isinstance(self, nn.Linear):
            return F.linear(input, weight, bias)
        return self._conv_forward(input, weight, bias)

    def __reduce_ex__(self, protocol):
        # The class is made at run time: pickle through its importable base.
        return _restore_half_stored, (self._base, self.__getstate__())


_HALF_STORED: Dict[type, type] = {}


def half_stored_class(base: type) -> type:
    """The half-stored variant of a linear/conv class (made once per class)."""
    if base not in _HALF_STORED:
        _HALF_STORED[base] = type(f'HalfStored{base.__name__}', (HalfStoredMixin, base),
                                  dict(_base=base, __module__=__name__))
    return _HALF_STORED[base]


def _restore_half_stored(base: type, state: dict) -> nn.Module:
    module = half_stored_class(base).__new__(half_stored_class(base))
    module.__setstate__(state)
    return module


def parse_frozen_weights_dtype(dtype, owner: str) -> Optional[str]:
    """``None``, a key of :data:`FROZEN_WEIGHTS_DTYPES` or its torch dtype
    -> the key."""
    if isinstance(dtype, torch.dtype):
        dtype = str(dtype).replace('torch.', '')
    if dtype is not None and dtype not in FROZEN_WEIGHTS_DTYPES:
        raise ValueError(f'{owner}: frozen_weights_dtype={dtype!r} is not supported; use '
                         f'None (fp32) or one of {sorted(FROZEN_WEIGHTS_DTYPES)}')
    return dtype


def store_frozen_weights(backbone: nn.Module, dtype, owner: str,
                         skip: str = 'csn', keep_fp32: Sequence[str] = ()) -> Optional[str]:
    """Store the frozen linear/conv weights of ``backbone`` in ``dtype``.

    Converts in place every ``nn.Linear``/``nn.Conv{1,2,3}d`` outside
    ``skip`` whose parameters are all frozen (see the module docstring).

    Args:
        backbone (nn.Module): A DTL backbone, already frozen (its options
            checked against :data:`mmdtl.models.dtl.options.INCOMPATIBLE`).
        dtype (str | torch.dtype | None): ``'bfloat16'``, ``'float16'`` or
            None (nothing to do).
        owner (str): Name used in error messages, e.g. ``'DTLViT'``.
        skip (str): Sub-module left alone (the side network).
        keep_fp32 (Sequence[str]): Module names (last part of the path, e.g.
            ``'qkv'``) left in fp32: layers whose weight the parent reads
            directly (``F.linear(x, module.weight)``), bypassing the
            module's forward.

    Returns:
        str | None: The storage dtype's name, as in a config.
    """
    name = parse_frozen_weights_dtype(dtype, owner)
    if name is None:
        return None
    dtype = FROZEN_WEIGHTS_DTYPES[name]
    # Which options it combines with: mmdtl.models.dtl.options.INCOMPATIBLE.
    converted = 0
    for path, module in backbone.named_modules():
        if path == skip or path.startswith(skip + '.') or not isinstance(module, _CONVERTIBLE):
            continue
        if path.rsplit('.', 1)[-1] in keep_fp32:
            continue
        params = list(module.parameters(recurse=False))
        if isinstance(module, HalfStoredMixin) or any(p.requires_grad for p in params):
            continue
        for param in params:
            param.data = param.data.to(dtype)
        module.__class__ = half_stored_class(type(module))
        converted += 1
    if not converted:
        raise ValueError(f'{owner}: frozen_weights_dtype={name!r} found no frozen Linear or '
                         f'Conv layer outside {skip!r} to store')
    return name
