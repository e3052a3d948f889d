"""Prepacked frozen linear weights for CPU training and inference.

A DTL backbone never updates its weights, so on CPU every frozen
``nn.Linear`` can be reordered once into oneDNN's blocked layout and kept
that way; full fine-tuning cannot keep packed weights, since they change
every step. The frozen suffix still passes gradients to the side network:
its backward ``dx = dy @ W`` runs on a second packed copy, of ``W``
transposed. Results equal the default kernels within fp32 rounding (a
different summation order).

Whether packing is faster depends on the CPU and the PyTorch build: oneDNN's
packed GEMM against the default CPU matmul, plus the Python dispatch of every
op of the forward while the packs are active. A ViT-B DTL+ step (batch 4,
fp32) on the development machine's 2-core AMD EPYC took 0.6x the time with
packing in early runs and 0.95x with torch 2.13; on an Intel Xeon it gained
nothing (``dtl+packed`` against ``dtl+`` in ``tools/analysis/benchmark.py``,
whose output names the CPU and torch). ``'auto'``
(:func:`build_frozen_linear_packs`) therefore times both on the first
training step's real shapes and packs only where that pays; ``True`` always
packs.

Only calls that are exactly equivalent are rerouted: fp32 CPU tensors,
weight and bias without ``requires_grad``, CPU autocast off, not inside
tracing or ``torch.compile``. Everything else runs ``F.linear`` unchanged,
so a GPU model, a trainable layer or an AMP step behave as without packing.
"""
import contextlib
import time
import weakref
from typing import Callable, Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from torch.autograd.function import once_differentiable
from torch.overrides import TorchFunctionMode, _get_current_function_mode_stack

#: A timer of ``'auto'``: ``(path, fn) -> seconds`` of one run of ``fn``,
#: ``path`` is ``'packed'`` or ``'plain'`` (what ``fn`` runs).
Timer = Callable[[str, Callable[[], object]], float]


def packing_available() -> bool:
    """Whether this torch build has the oneDNN ops that packing needs."""
    return (torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, '_reorder_linear_weight')
            and hasattr(torch.ops.mkldnn, '_linear_pointwise'))


def _packed_linear(x: torch.Tensor, packed: torch.Tensor,
                   bias: Optional[torch.Tensor]) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, 'none', [], '')


def packed_linears(packs: Optional['FrozenLinearPacks'], inputs: torch.Tensor):
    """The context a forward on ``inputs`` runs in.

    A no-op context when ``packs`` is None, the model runs elsewhere (no
    per-op dispatch cost on GPU), ``packs`` are already active in this thread
    (callers nest: a nested mode would add a second Python dispatch to every
    op) or ``'auto'`` chose the default kernels.

    Until ``'auto'`` has decided, a forward with grad enabled (a training
    step) runs the default kernels and notes its frozen linears, which
    :meth:`FrozenLinearPacks.decide` times when the forward ends; a forward
    without grad runs the default kernels. The choice takes effect at the
    next entry on ``inputs`` without grad (the images of the next forward):
    entries on a stream that carries grad may be the checkpointed suffix
    recomputed in the measured step's backward, which must run the kernels
    its forward ran.
    """
    if packs is None or inputs.device.type != 'cpu' or packs.is_active():
        return contextlib.nullcontext()
    if packs.use_packed is None:
        if packs.chosen is not None:
            if inputs.requires_grad:
                return contextlib.nullcontext()  # as in the measured forward
            packs.use_packed = packs.chosen
        elif not torch.is_grad_enabled():
            return contextlib.nullcontext()
        else:
            return _PackedLinearMode(packs, record_input=tuple(inputs.shape))
    return packs.active() if packs.use_packed else contextlib.nullcontext()


def build_frozen_linear_packs(mode: Union[bool, str, None],
                              owner: str) -> Optional['FrozenLinearPacks']:
    """The packs of a backbone's ``pack_frozen_weights`` option.

    Args:
        mode (bool | str): False or None: no packs (returns None). True: run
            every eligible frozen linear on packed weights. ``'auto'``: time
            both kernels once, on the first training step, and keep the
            faster (see :meth:`FrozenLinearPacks.decide`).
        owner (str): Named in errors and in the decision's log line.
    """
    if mode is None or mode is False:
        return None
    if mode is not True and mode != 'auto':
        raise ValueError(f"{owner}: pack_frozen_weights={mode!r} is not one of False, True, "
                         f"'auto'")
    if not packing_available():
        if mode == 'auto':
            print_log(f"{owner}: pack_frozen_weights='auto': this torch build has no oneDNN, "
                      f'the default kernels run', logger='current')
            return None
        raise ValueError(f'{owner}: pack_frozen_weights=True needs a torch build with oneDNN '
                         f"(torch.backends.mkldnn); set pack_frozen_weights=False or 'auto'")
    return FrozenLinearPacks(auto=mode == 'auto', owner=owner)


def fastest_seconds(path: str, fn: Callable[[], object], warmup: int = 1,
                    repeats: int = 3) -> float:
    """The default :data:`Timer` of ``'auto'``: the fastest of ``repeats``
    runs of ``fn`` after ``warmup`` runs (the run least disturbed by other
    work on the machine); ``path`` is not used."""
    for _ in range(warmup):
        fn()
    best = float('inf')
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - tic)
    return best


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


class _NotedCall:
    """Frozen linear calls of one shape in the forward ``'auto'`` watched."""
    __slots__ = ('weight', 'bias', 'forwards', 'backwards')

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor]):
        self.weight, self.bias = weight, bias
        self.forwards = self.backwards = 0


class FrozenLinearPacks:
    """oneDNN-packed copies of frozen linear weights, made on first use.

    A copy is remade when its weight changes: a new storage (``.to()``,
    replacing ``.data``) or an in-place write through the parameter
    (``load_state_dict``, ``copy_``). Writes through ``.data`` bypass
    PyTorch's version counter; call :meth:`clear` after those. Packed copies
    are never saved, pickled or deep-copied (a copy starts empty, and with
    ``auto`` measures again).

    Use :meth:`active` around the forward pass::

        packs = FrozenLinearPacks()
        with packs.active():
            logits = model(images)
        logits.sum().backward()   # the backward needs no context

    Args:
        auto (bool): Let :func:`packed_linears` measure once whether the
            packs are faster than the default kernels, on the first forward
            with grad enabled, and use them only if so (:meth:`decide`).
            :meth:`active` always uses the packs. Defaults to False.
        timer (callable, optional): ``(path, fn) -> seconds`` of one run of
            ``fn`` (see :data:`Timer`), for ``auto``. Defaults to
            :func:`fastest_seconds`.
        min_gain (float): ``auto`` packs only if the packed kernels take at
            most ``1 - min_gain`` of the default kernels' time: the packed
            copies cost memory (one more copy of every frozen linear weight,
            two in the suffix), a gain within the timing noise is not worth
            it. Defaults to 0.05.
        owner (str): Names the model in the decision's log line.
    """

    def __init__(self, auto: bool = False, timer: Optional[Timer] = None,
                 min_gain: float = 0.05, owner: str = 'FrozenLinearPacks'):
        self._entries: Dict[tuple, _Entry] = {}
        self.auto, self.timer, self.min_gain, self.owner = auto, timer, min_gain, owner
        #: True: packed kernels; False: default kernels; None: ``auto``, not
        #: measured yet or its choice not in effect yet.
        self.use_packed: Optional[bool] = None if auto else True
        #: ``auto``'s choice once measured (see :func:`packed_linears`).
        self.chosen: Optional[bool] = None
        #: ``auto``'s measurement: dict(packed_ms, plain_ms, calls, shapes,
        #: input), or None before it.
        self.decision: Optional[dict] = None
        self._noted: Dict[tuple, _NotedCall] = {}
        self._noted_ops = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        """Memory held by the packed copies."""
        return sum(e.packed.numel() * e.packed.element_size() for e in self._entries.values())

    def __deepcopy__(self, memo) -> 'FrozenLinearPacks':
        return FrozenLinearPacks(self.auto, self.timer, self.min_gain, self.owner)

    def __getstate__(self) -> dict:
        # Not the timer (it may not pickle) nor the decision (another
        # process may run on another CPU).
        return dict(auto=self.auto, min_gain=self.min_gain, owner=self.owner)

    def __setstate__(self, state: dict) -> None:
        self.__init__(auto=state.get('auto', False), min_gain=state.get('min_gain', 0.05),
                      owner=state.get('owner', 'FrozenLinearPacks'))

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

    # -- 'auto' ------------------------------------------------------------------
    def _note(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
              needs_grad: bool) -> None:
        key = (tuple(x.shape), tuple(weight.shape), bias is not None)
        call = self._noted.setdefault(key, _NotedCall(weight, bias))
        call.forwards += 1
        call.backwards += int(needs_grad)

    def decide(self, input_shape: Tuple[int, ...] = ()) -> bool:
        """Choose the kernels of ``auto`` from the frozen linear calls noted
        in one forward (see :func:`packed_linears`), log the choice in one
        line and return it (True: packed; also in :attr:`chosen`).

        Each noted shape runs with both kernels on constant inputs (the
        weights are the model's; no random numbers are drawn, so training
        draws the same dropout and drop path as without ``auto``): the
        forward GEMM once per call, the input-gradient GEMM once per call
        that needed it. The packed side also pays the Python dispatch its
        mode adds to every op of the forward, timed on a small op. The per
        step sums are compared: the packs are used if they save at least
        ``min_gain`` of the time, else the default kernels run and the packs
        made for timing are dropped.

        Args:
            input_shape (tuple): The forward's input shape, for the log line.
        """
        noted, ops = self._noted, self._noted_ops
        self._noted, self._noted_ops = {}, 0
        timer = self.timer or fastest_seconds
        packed = plain = 0.
        with torch.no_grad():
            for (x_shape, w_shape, _), call in noted.items():
                weight, bias = call.weight, call.bias
                x = torch.ones(x_shape)
                plain += call.forwards * timer('plain', lambda: F.linear(x, weight, bias))
                packed_w = self.get(weight)
                packed += call.forwards * timer(
                    'packed', lambda: _packed_linear(x, packed_w, bias))
                if call.backwards:
                    dy = torch.ones(*x_shape[:-1], w_shape[0])
                    # What autograd runs for F.linear's input gradient.
                    plain += call.backwards * timer('plain', lambda: dy.matmul(weight))
                    packed_wt = self.get(weight, transposed=True)
                    packed += call.backwards * timer(
                        'packed', lambda: _packed_linear(dy, packed_wt, None))
            if noted:
                packed += ops * self._dispatch_seconds(timer)
        use_packed = bool(noted) and packed <= (1 - self.min_gain) * plain
        if not use_packed:
            self.clear()
        self.chosen = use_packed
        shapes = len(noted)
        calls = sum(c.forwards for c in noted.values())
        self.decision = dict(packed_ms=1e3 * packed, plain_ms=1e3 * plain, calls=calls,
                             shapes=shapes, input=tuple(input_shape))
        if not noted:
            message = ('no frozen fp32 linear ran on CPU outside autocast in the first '
                       'training forward; the default kernels run')
        else:
            message = (f'{"packed" if use_packed else "default (plain)"} frozen linears chosen: '
                       f'packed {1e3 * packed:.1f} ms vs plain {1e3 * plain:.1f} ms per step '
                       f'({packed / plain:.2f}x; packing needs <= {1 - self.min_gain:.2f}x), '
                       f'{calls} frozen linear calls of {shapes} shapes, input '
                       f'{tuple(input_shape)}, torch {torch.__version__}')
        print_log(f"{self.owner}: pack_frozen_weights='auto': {message}", logger='current')
        return use_packed

    def _dispatch_seconds(self, timer: Timer, ops: int = 200) -> float:
        """What the packs' mode adds to one op of the forward."""
        a = torch.ones(1)

        def bare():
            for _ in range(ops):
                torch.add(a, a)

        def in_mode():
            with _PackedLinearMode(self):
                for _ in range(ops):
                    torch.add(a, a)

        return max(0., timer('packed', in_mode) - timer('plain', bare)) / ops


class _PackedLinearMode(TorchFunctionMode):
    """Sends eligible ``F.linear`` calls to :class:`FrozenLinearPacks`; with
    ``record_input`` (``'auto'``, not decided yet) it runs them unchanged,
    notes them and every op, and has the packs decide when it exits."""

    def __init__(self, packs: FrozenLinearPacks, record_input: Optional[tuple] = None):
        super().__init__()
        self.packs, self.record_input = packs, record_input

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        recording = self.record_input is not None
        if recording:
            self.packs._noted_ops += 1
        if func is F.linear:
            x, weight = args[0], kwargs.get('weight', args[1] if len(args) > 1 else None)
            bias = kwargs.get('bias', args[2] if len(args) > 2 else None)
            if self.packs.eligible(x, weight, bias):
                needs_grad = torch.is_grad_enabled() and x.requires_grad
                if recording:
                    self.packs._note(x, weight, bias, needs_grad)
                elif needs_grad:
                    return _PackedLinearFunction.apply(x, weight, bias, self.packs)
                else:
                    return _packed_linear(x, self.packs.get(weight), bias)
        return func(*args, **kwargs)

    def __exit__(self, exc_type, exc_value, traceback):
        super().__exit__(exc_type, exc_value, traceback)
        if self.record_input is not None and exc_type is None \
                and self.packs.chosen is None:
            self.packs.decide(self.record_input)
