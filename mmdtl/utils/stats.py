"""Mean and sample standard deviation of result tables (suites and the demo)."""
import math
from typing import Sequence


def mean(values: Sequence[float]) -> float:
    """The arithmetic mean of a non-empty sequence."""
    return sum(values) / len(values)


def sample_std(values: Sequence[float]) -> float:
    """The sample standard deviation (n - 1); 0 for a single value."""
    if len(values) < 2:
        return 0.
    m = mean(values)
    return math.sqrt(sum((v - m)**2 for v in values) / (len(values) - 1))
