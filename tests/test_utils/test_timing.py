"""median_seconds: warm-up runs are dropped, the median of the rest is kept."""
from mmdtl.utils import timing


def test_median_seconds_skips_warmup(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(timing.time, 'perf_counter', lambda: clock[0])
    durations = iter([100., 100., 3., 1., 2., 50., 4.])  # two warm-up runs, then five

    def run():
        clock[0] += next(durations)

    assert timing.median_seconds(run, 'cpu', warmup=2, repeats=5) == 3.
    assert next(durations, None) is None  # exactly warmup + repeats calls
