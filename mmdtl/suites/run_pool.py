"""Run independent jobs at the same time, each on its own group of devices.

``tools/run_suite.py --gpus N`` uses it to train N single-GPU runs at once
(or N / K runs of K GPUs with ``--gpus-per-run K``): a job holds its device
group for as long as it runs, so no two jobs ever share a device, and the next
job starts on the first group that frees up.
"""
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List, Sequence, Tuple, TypeVar

Job = TypeVar('Job')
DeviceGroup = Tuple[str, ...]


def device_groups(devices: Sequence[str], per_run: int) -> List[DeviceGroup]:
    """Split ``devices`` into consecutive groups of ``per_run``.

    Args:
        devices (Sequence[str]): device ids as ``CUDA_VISIBLE_DEVICES`` lists
            them, e.g. ``['0', '1', '2', '3']``.
        per_run (int): devices per job.

    Returns:
        list[tuple[str, ...]]: e.g. ``[('0', '1'), ('2', '3')]`` for 2 per run.
    """
    devices = [str(d).strip() for d in devices]
    if per_run < 1:
        raise ValueError(f'devices per run must be >= 1, got {per_run}')
    if not devices or any(not d or ',' in d for d in devices):
        raise ValueError(f'expected a list of device ids, got {devices}')
    repeated = sorted({d for d in devices if devices.count(d) > 1})
    if repeated:
        raise ValueError(f'device(s) {", ".join(repeated)} listed more than once: two runs '
                         'would share them')
    if len(devices) % per_run:
        raise ValueError(f'{len(devices)} device(s) ({",".join(devices)}) do not split into '
                         f'groups of {per_run} per run')
    return [tuple(devices[i:i + per_run]) for i in range(0, len(devices), per_run)]


def run_on_devices(jobs: Sequence[Job], groups: Sequence[DeviceGroup],
                   work: Callable[[Job, DeviceGroup, int], bool]) -> List[bool]:
    """Call ``work(job, group, slot)`` for every job, one job per group at a time.

    Jobs start in their order as groups free up; ``slot`` is the index of the
    group (e.g. to give concurrent DDP runs distinct ports). A job fails when
    ``work`` returns False or raises (the traceback is printed and the other
    jobs go on).

    Args:
        jobs (Sequence): the jobs.
        groups (Sequence[tuple[str, ...]]): disjoint device groups, see
            :func:`device_groups`.
        work (Callable): runs one job on one group; returns success.

    Returns:
        list[bool]: success of every job, in the order of ``jobs``.
    """
    if not groups:
        raise ValueError('no device group to run on')
    free = list(range(len(groups)))
    lock = threading.Lock()
    results = [False] * len(jobs)

    def run(index: int, job) -> None:
        # At most len(groups) workers run at once, so a group is always free.
        with lock:
            slot = free.pop(0)
        try:
            results[index] = bool(work(job, tuple(groups[slot]), slot))
        except Exception:
            print(f'job {index + 1}/{len(jobs)} on devices {",".join(groups[slot])} raised:\n'
                  f'{traceback.format_exc()}', flush=True)
        finally:
            with lock:
                free.append(slot)

    with ThreadPoolExecutor(max_workers=len(groups)) as pool:
        for future in [pool.submit(run, i, job) for i, job in enumerate(jobs)]:
            future.result()
    return results
