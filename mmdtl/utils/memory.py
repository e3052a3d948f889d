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
