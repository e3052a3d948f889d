"""Memory meters: exact byte counts on hand-made steps."""
import torch

from mmdtl.utils import SavedTensorMeter, cpu_step_peak_bytes


def test_cpu_step_peak_bytes_is_exact():
    live = torch.zeros(1000)  # 4,000 B alive through the step

    def step():
        first = torch.ones(250_000)   # 1 MB
        second = torch.ones(500_000)  # 2 MB: the peak, with the first
        del first, second
        return torch.ones(100_000)    # 0.4 MB after both were freed

    # A view shares its base's storage: counted once.
    assert cpu_step_peak_bytes(step, [live, live[:10]]) == 4_000 + 3_000_000


def test_saved_tensor_meter_counts_storages_once():
    weight = torch.randn(8, 8, requires_grad=True)
    x = torch.randn(4, 8, requires_grad=True)
    with SavedTensorMeter(exclude=[weight]) as meter:
        hidden = x @ weight              # saves x (and the excluded weight)
        out = (hidden * hidden).sum()    # saves hidden (both operands: one storage)
    out.backward()
    assert meter.bytes == x.nbytes + hidden.nbytes
