"""Wall-clock timing for the benchmark tools."""
import statistics
import time
from typing import Callable, Union

import torch


def synchronize(device: Union[str, torch.device]) -> None:
    """Wait for queued GPU work, so a timer sees it finish (no-op on CPU)."""
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], device: Union[str, torch.device],
                   warmup: int, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup``
    runs, the device synchronised around each run."""
    times = []
    for i in range(warmup + repeats):
        synchronize(device)
        tic = time.perf_counter()
        fn()
        synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - tic)
    return statistics.median(times)
