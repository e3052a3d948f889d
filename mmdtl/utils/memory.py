"""Measure what autograd keeps for backward: the activation memory of a step."""
from typing import Callable, Iterable

import torch


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
        self._excluded = {t.untyped_storage().data_ptr() for t in exclude}
        self.storages = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in self._excluded:
            self.storages[ptr] = storage.nbytes()
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


def _unique_storage_bytes(tensors: Iterable[torch.Tensor]) -> int:
    storages = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def cpu_step_peak_bytes(step: Callable[[], object], live: Iterable[torch.Tensor]) -> int:
    """Peak bytes of live CPU tensors while ``step()`` runs: the CPU analogue
    of ``torch.cuda.max_memory_allocated`` for one training step.

    The profiler records every allocation and free of PyTorch's CPU
    allocator during the step; its running sum peaks at the step's extra
    memory (activations, gradients, temporaries, new optimizer state). The
    tensors ``live`` before the step (parameters, buffers, optimizer state,
    inputs; storage-deduplicated) are added. Memory outside PyTorch's
    allocator (oneDNN scratch pads, Python objects) is not counted.

    Args:
        step (Callable): One training step on CPU tensors.
        live (Iterable[Tensor]): The tensors that exist before the step
            and stay alive through it.
    """
    from torch.profiler import ProfilerActivity, profile

    base = _unique_storage_bytes(live)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    cpu = torch._C._autograd.DeviceType.CPU
    deltas = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == '[memory]' and e.device_type() == cpu)
    current = peak = 0
    for _, nbytes in deltas:
        current += nbytes
        peak = max(peak, current)
    return base + peak
