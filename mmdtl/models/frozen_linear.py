"""Prepacked frozen linear weights for CPU training and inference.

A DTL backbone never updates its weights, so on CPU every frozen
``nn.Linear`` can be reordered once into oneDNN's blocked layout and kept
that way. oneDNN's packed fp32 GEMM is much faster than the default CPU
matmul (a ViT-B DTL+ step: 0.6x the time, ``dtl+packed`` in
``tools/analysis/benchmark.py``), and packing is something full fine-tuning
cannot keep, since its weights change every step. The frozen suffix still
passes gradients to the side network: its backward ``dx = dy @ W`` runs on a
second packed copy, of ``W`` transposed. Results equal the default kernels
within fp32 rounding (a different summation order).

Only calls that are exactly equivalent are rerouted: fp32 CPU tensors,
weight and bias without ``requires_grad``, CPU autocast off, not inside
tracing or ``torch.compile``. Everything else runs ``F.linear`` unchanged,
so a GPU model, a trainable layer or an AMP step behave as without packing.
"""
import contextlib
import weakref
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.overrides import TorchFunctionMode, _get_current_function_mode_stack


def packing_available() -> bool:
    """Whether this torch build has the oneDNN ops that packing needs."""
    return (torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, '_reorder_linear_weight')
            and hasattr(torch.ops.mkldnn, '_linear_pointwise'))


def _packed_linear(x: torch.Tensor, packed: torch.Tensor,
                   bias: Optional[torch.Tensor]) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, 'none', [], '')


def packed_linears(packs: Optional['FrozenLinearPacks'], inputs: torch.Tensor):
    """``packs.active()`` for CPU ``inputs``; a no-op context when ``packs``
    is None, the model runs elsewhere (no per-op dispatch cost on GPU) or
    ``packs`` are already active in this thread (callers nest: a nested mode
    would add a second Python dispatch to every op)."""
    if packs is None or inputs.device.type != 'cpu' or packs.is_active():
        return contextlib.nullcontext()
    return packs.active()


def build_frozen_linear_packs(enabled: bool, owner: str) -> Optional['FrozenLinearPacks']:
    """The packs of a backbone's ``pack_frozen_weights`` option (None if off)."""
    if not enabled:
        return None
    if not packing_available():
        raise ValueError(f'{owner}: pack_frozen_weights=True needs a torch build with oneDNN '
                         f'(torch.backends.mkldnn); set pack_frozen_weights=False')
    return FrozenLinearPacks()


class _PackedLinearFunction(torch.autograd.Function):
    """``x @ W.T + b`` for a frozen ``W``: the only gradient is the input's."""

    @staticmethod
    def forward(ctx, x, weight, bias, packs):
        # The weight is a frozen parameter, not an activation: keep a
        # reference, outside save_for_backward, to pack its transpose.
        ctx.weight, ctx.packs = weight, packs
        return _packed_linear(x, packs.get(weight), bias)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        grad_input = _packed_linear(grad_output.contiguous(),
                                    ctx.packs.get(ctx.weight, transposed=True), None)
        return grad_input, None, None, None


class _Entry:
    __slots__ = ('ref', 'version', 'data_ptr', 'packed')

    def __init__(self, weight: torch.Tensor, packed: torch.Tensor):
        self.ref = weakref.ref(weight)
        self.version = weight._version
        self.data_ptr = weight.data_ptr()
        self.packed = packed

    def valid_for(self, weight: torch.Tensor) -> bool:
        return (self.ref() is weight and self.version == weight._version
                and self.data_ptr == weight.data_ptr())


class FrozenLinearPacks:
    """oneDNN-packed copies of frozen linear weights, made on first use.

    A copy is remade when its weight changes: a new storage (``.to()``,
    replacing ``.data``) or an in-place write through the parameter
    (``load_state_dict``, ``copy_``). Writes through ``.data`` bypass
    PyTorch's version counter; call :meth:`clear` after those. Packed copies
    are never saved, pickled or deep-copied (a copy starts empty).

    Use :meth:`active` around the forward pass::

        packs = FrozenLinearPacks()
        with packs.active():
            logits = model(images)
        logits.sum().backward()   # the backward needs no context
    """

    def __init__(self):
        self._entries: Dict[tuple, _Entry] = {}

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        """Memory held by the packed copies."""
        return sum(e.packed.numel() * e.packed.element_size() for e in self._entries.values())

    def __deepcopy__(self, memo) -> 'FrozenLinearPacks':
        return FrozenLinearPacks()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self._entries = {}

    def clear(self) -> None:
        """Drop every packed copy (they are remade on the next use)."""
        self._entries.clear()

    def get(self, weight: torch.Tensor, transposed: bool = False) -> torch.Tensor:
        """The packed copy of ``weight`` (of ``weight.T`` if ``transposed``)."""
        key = (id(weight), transposed)
        entry = self._entries.get(key)
        if entry is None or not entry.valid_for(weight):
            source = weight.detach()
            source = source.t().contiguous() if transposed else source
            entry = _Entry(weight, torch.ops.mkldnn._reorder_linear_weight(source))
            self._entries[key] = entry
        return entry.packed

    def active(self) -> '_PackedLinearMode':
        """Context manager routing eligible ``F.linear`` calls to the packs."""
        return _PackedLinearMode(self)

    def is_active(self) -> bool:
        """Whether a mode of these packs is on this thread's mode stack."""
        return any(isinstance(mode, _PackedLinearMode) and mode.packs is self
                   for mode in _get_current_function_mode_stack())

    @staticmethod
    def eligible(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> bool:
        """Whether the packed kernel computes exactly this ``F.linear`` call."""
        tensors = [x, weight] + ([bias] if bias is not None else [])
        return (all(isinstance(t, torch.Tensor) and t.device.type == 'cpu'
                    and t.dtype == torch.float32 and t.layout == torch.strided
                    for t in tensors)
                and not weight.requires_grad
                and (bias is None or not bias.requires_grad)
                and weight.dim() == 2 and x.dim() >= 2
                and not torch.is_autocast_enabled('cpu')
                and not torch.jit.is_tracing()
                and not torch.compiler.is_compiling())


class _PackedLinearMode(TorchFunctionMode):
    """Sends eligible ``F.linear`` calls to :class:`FrozenLinearPacks`."""

    def __init__(self, packs: FrozenLinearPacks):
        super().__init__()
        self.packs = packs

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            x, weight = args[0], kwargs.get('weight', args[1] if len(args) > 1 else None)
            bias = kwargs.get('bias', args[2] if len(args) > 2 else None)
            if self.packs.eligible(x, weight, bias):
                if torch.is_grad_enabled() and x.requires_grad:
                    return _PackedLinearFunction.apply(x, weight, bias, self.packs)
                return _packed_linear(x, self.packs.get(weight), bias)
        return func(*args, **kwargs)
