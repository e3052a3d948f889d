"""Measure what autograd keeps for backward and the tensor peak of a step,
for real (CPU profiler) or without running the math (fake tensors)."""
import contextlib
import weakref
from typing import Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional

import torch


def _storage_key(tensor: torch.Tensor) -> int:
    # The storage's C++ object: unique while alive, for real and fake tensors
    # (a fake tensor's data_ptr is meaningless).
    return tensor.untyped_storage()._cdata


class SavedTensorMeter:
    """Counts the bytes of tensors saved for backward, storage-deduplicated.

    Use as a context manager around a forward pass; tensors that share a
    storage (views, the same activation saved by two ops) count once, and
    storages of the given ``exclude`` tensors (the parameters) do not count.

    Args:
        exclude (Iterable[Tensor]): Tensors whose storages are not
            activations, typically ``model.parameters()``.
    """

    def __init__(self, exclude: Iterable[torch.Tensor] = ()):
        self._excluded = {_storage_key(t) for t in exclude}
        self.storages = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        key = _storage_key(tensor)
        if key not in self._excluded:
            self.storages[key] = tensor.untyped_storage().nbytes()
        return tensor

    @staticmethod
    def _unpack(tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    @property
    def bytes(self) -> int:
        return sum(self.storages.values())

    def __enter__(self) -> 'SavedTensorMeter':
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)


def saved_activation_bytes(model: torch.nn.Module, step: Callable[[], torch.Tensor]) -> int:
    """Bytes saved for backward by ``step()`` (a forward returning a loss),
    parameters excluded. Runs backward afterwards to free the graph."""
    with SavedTensorMeter(exclude=model.parameters()) as meter:
        loss = step()
    if loss.requires_grad:
        loss.backward()
    return meter.bytes


def unique_storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the storages of ``tensors``, each storage counted once."""
    return sum({_storage_key(t): t.untyped_storage().nbytes() for t in tensors}.values())


def training_state(model: torch.nn.Module,
                   optimizer: Optional[torch.optim.Optimizer] = None) -> List[torch.Tensor]:
    """The tensors that live across training steps: parameters, buffers,
    gradients left by the last step and the optimizer state."""
    tensors = [*model.parameters(), *model.buffers()]
    tensors += [p.grad for p in model.parameters() if p.grad is not None]
    if optimizer is not None:
        tensors += [v for state in optimizer.state.values() for v in state.values()
                    if torch.is_tensor(v)]
    return tensors


def cpu_step_peak_bytes(step: Callable[[], object], live: Iterable[torch.Tensor]) -> int:
    """Peak bytes of live CPU tensors while ``step()`` runs: the CPU analogue
    of ``torch.cuda.max_memory_allocated`` for one training step.

    The profiler records every allocation and free of PyTorch's CPU
    allocator during the step; its running sum peaks at the step's extra
    memory (activations, gradients, temporaries, new optimizer state). The
    tensors ``live`` before the step (parameters, buffers, optimizer state,
    inputs; storage-deduplicated) are added. Memory outside PyTorch's
    allocator (oneDNN scratch pads, Python objects) is not counted; scratch
    that CPU kernels take from it is (see :func:`cpu_step_peaks`).

    Args:
        step (Callable): One training step on CPU tensors.
        live (Iterable[Tensor]): The tensors that exist before the step
            (see :func:`training_state`); those the step frees, such as the
            last step's gradients, must be among them.
    """
    from torch.profiler import ProfilerActivity, profile

    base = unique_storage_bytes(live)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    current = peak = 0
    for _, nbytes in _allocator_deltas(prof):
        current += nbytes
        peak = max(peak, current)
    return base + peak


def _allocator_deltas(prof) -> List[tuple]:
    """``(time ns, bytes)`` of every CPU allocation (+) and free (-) that
    ``prof`` (a profile with ``profile_memory=True``) recorded, in order."""
    cpu = torch._C._autograd.DeviceType.CPU
    return sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                  if e.name() == '[memory]' and e.device_type() == cpu)


class CPUStepPeaks(NamedTuple):
    """The peaks of a CPU step (see :func:`cpu_step_peaks`), in bytes.

    Attributes:
        allocator (int): What PyTorch's CPU allocator held at its peak.
        tensors (int): The peak of the step's tensors: the allocator's
            count between ops, when no kernel holds scratch memory.
    """
    allocator: int
    tensors: int

    @property
    def scratch(self) -> int:
        """What the allocator's peak adds to the tensors' peak: memory that
        a CPU kernel took and gave back while it ran."""
        return self.allocator - self.tensors


class _OpBoundaries(torch.utils._python_dispatch.TorchDispatchMode):
    """Marks every op in the profile (one ``mmdtl::op`` range each): where
    a kernel starts and returns. Allocates nothing."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        with torch.profiler.record_function('mmdtl::op'):
            return func(*args, **(kwargs or {}))


def cpu_step_peaks(step: Callable[[], object], live: Iterable[torch.Tensor]) -> CPUStepPeaks:
    """The peak of the CPU allocator during ``step()`` (as
    :func:`cpu_step_peak_bytes`) and the peak of the step's *tensors*: the
    allocator's count taken only when no op is running.

    Inside an op a CPU kernel may take scratch memory from the allocator and
    give it back before it returns (e.g. an fp32 + bf16 add first copies
    the bf16 operand to fp32; oneDNN convolutions and GEMMs reorder their
    operands). That scratch is no tensor of the step, depends on the CPU and
    its kernels, and has no counterpart on a GPU, where such an add casts
    while it loads (GPU libraries have workspaces of their own). Between ops
    the allocator holds exactly the live tensors; an op's outputs are
    allocated by the time it returns and its inputs are still referenced
    while it runs, so the tensors' peak is reached at an op's end or
    outside any op. Both counts come from the profiler's allocation
    records; op boundaries are marked by a dispatch mode that allocates
    nothing.

    Args:
        step (Callable): One training step on CPU tensors.
        live (Iterable[Tensor]): The tensors that exist before the step
            (see :func:`training_state`).
    """
    from torch.profiler import ProfilerActivity, profile

    base = unique_storage_bytes(live)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        with _OpBoundaries():
            step()
    ops = []  # (start, end) of every op, nested ones merged into the outer
    for start, end in sorted((e.start_ns(), e.start_ns() + e.duration_ns())
                             for e in prof.profiler.kineto_results.events()
                             if e.name() == 'mmdtl::op'):
        if ops and start <= ops[-1][1]:
            ops[-1][1] = max(ops[-1][1], end)
        else:
            ops.append([start, end])
    current = peak = tensors = 0
    index = 0
    for time_ns, nbytes in _allocator_deltas(prof):
        while index < len(ops) and ops[index][1] < time_ns:
            tensors = max(tensors, current)  # an op returned: its outputs exist
            index += 1
        current += nbytes
        peak = max(peak, current)
        if index == len(ops) or time_ns < ops[index][0]:  # outside every op
            tensors = max(tensors, current)
    tensors = max(tensors, current)
    return CPUStepPeaks(allocator=base + peak, tensors=base + tensors)


class StorageMemoryTracker(torch.utils._python_dispatch.TorchDispatchMode):
    """Bytes of the tensor storages that ops create while it is active, now
    and at the peak: what an allocator would count, for real tensors or for
    fake ones (:func:`fake_tensors`), which have sizes but no data.

    Every new output storage counts from its creation until it is freed
    (a weak reference tells). Outputs that share an input's storage (views,
    in-place results, also of tensors made before tracking) add nothing.
    Memory that kernels use internally without returning it (library
    workspaces) is not seen.

    Args:
        describe_peak (bool): Also keep :attr:`peak_breakdown`, what was
            alive at the peak: ``(bytes, count, op, dtype, shape)`` per kind
            of tensor, largest first. Defaults to False (cheaper).
    """

    def __init__(self, describe_peak: bool = False):
        super().__init__()
        self.current = self.peak = 0
        self.peak_breakdown: List[tuple] = []
        self._describe = describe_peak
        self._alive: Dict[int, weakref.ref] = {}
        self._labels: Dict[int, tuple] = {}

    def _freed(self, key: int, nbytes: int, _ref=None) -> None:
        if self._alive.pop(key, None) is not None:
            self._labels.pop(key, None)
            self.current -= nbytes

    def _describe_peak(self) -> None:
        groups: Dict[tuple, list] = {}
        for nbytes, *label in self._labels.values():
            group = groups.setdefault(tuple(label), [0, 0])
            group[0] += nbytes
            group[1] += 1
        self.peak_breakdown = sorted(((b, n, *label) for label, (b, n) in groups.items()),
                                     reverse=True)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {_storage_key(t) for t in torch.utils._pytree.tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor)}
        for tensor in torch.utils._pytree.tree_leaves(out):
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key = storage._cdata
            if key in self._alive or key in inputs:
                continue
            nbytes = storage.nbytes()
            callback = lambda ref, key=key, nbytes=nbytes: self._freed(key, nbytes)  # noqa: E731
            self._alive[key] = weakref.ref(storage, callback)
            if self._describe:
                self._labels[key] = (nbytes, str(func), str(tensor.dtype).replace('torch.', ''),
                                     tuple(tensor.shape))
            self.current += nbytes
            if self.current > self.peak:
                self.peak = self.current
                if self._describe:
                    self._describe_peak()
        return out


def tracked_step_peak_bytes(step: Callable[[], object], live: Iterable[torch.Tensor],
                            tracker: Optional[StorageMemoryTracker] = None) -> int:
    """Peak bytes of live tensors while ``step()`` runs, counted by
    :class:`StorageMemoryTracker`: the same quantity as
    :func:`cpu_step_peak_bytes`, on any device and on fake tensors, where
    nothing is computed or allocated (an estimate of a step too large to run).

    Args:
        step (Callable): One training step.
        live (Iterable[Tensor]): The tensors that exist before the step (see
            :func:`training_state`).
        tracker (StorageMemoryTracker, optional): The tracker to use (e.g.
            one that describes the peak). Defaults to a new one.
    """
    base = unique_storage_bytes(live)
    with tracker or StorageMemoryTracker() as tracker:
        step()
    return base + tracker.peak


class _RealScalarsMode(torch.overrides.TorchFunctionMode):
    """Under fake tensors, computes ``torch.linspace`` and everything derived
    from it for real: constructors read schedules (e.g. Swin's drop-path
    rates) as Python numbers, which a fake tensor does not have."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        from torch._subclasses.fake_tensor import FakeTensor, unset_fake_temporarily
        kwargs = kwargs or {}
        tensors = [t for t in torch.utils._pytree.tree_leaves((args, kwargs))
                   if isinstance(t, torch.Tensor)]
        if func is torch.linspace or (tensors and not any(isinstance(t, FakeTensor)
                                                          for t in tensors)):
            with unset_fake_temporarily():
                return func(*args, **kwargs)
        return func(*args, **kwargs)


@contextlib.contextmanager
def fake_tensors() -> Iterator[None]:
    """Build models and run steps on fake tensors: shapes, dtypes, devices and
    autograd as for real, no data and no memory (PyTorch's FakeTensorMode).
    A 1B-parameter backbone is built and stepped in seconds; measure it with
    :class:`StorageMemoryTracker` and :class:`SavedTensorMeter`."""
    from unittest import mock

    from torch._subclasses.fake_tensor import FakeTensorMode

    # mmengine's init_weights notes which parameters changed by comparing
    # their means, values a fake tensor does not have; it is only logging.
    with FakeTensorMode(), _RealScalarsMode(), mock.patch(
            'mmengine.model.base_module.update_init_info', lambda *args, **kwargs: None):
        yield
