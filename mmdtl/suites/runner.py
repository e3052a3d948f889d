"""Train and test one run of a suite through the tools, unless it is done.

A run whose ``results.json`` exists is skipped; one that trained
(``train_done.json``) is only tested; an interrupted one resumes from its
``last_checkpoint``. The tools' output goes to ``run_suite_train.log`` /
``run_suite_test.log`` in the run's folder.
"""
import glob
import json
import os
import os.path as osp
import subprocess
import sys
import time
from typing import List, Optional

from mmdtl.utils.report import write_json

from .definitions import REPO, RESULTS, TOP1, TRAIN_DONE, Run
from .launch import Launch, shown, test_command, train_command


def find_checkpoint(run: Run) -> str:
    """The best-validation checkpoint where the config saves one, else the last."""
    if run.uses_best:
        best = glob.glob(osp.join(run.run_dir, 'best_*.pth'))
        if not best:
            raise RuntimeError(f'{run.label}: no best_*.pth in {run.run_dir}; validation never '
                               'ran (is val_interval larger than max_epochs?).')
        return max(best, key=osp.getmtime)
    last = osp.join(run.run_dir, 'last_checkpoint')
    if not osp.isfile(last):
        raise RuntimeError(f'{run.label}: training left no {last}.')
    with open(last) as f:
        path = f.read().strip()
    if not osp.isfile(path):  # the folder was moved: same file name here
        path = osp.join(run.run_dir, osp.basename(path))
    return path


def last_validation(run: Run) -> Optional[dict]:
    """The metrics of the validation at epoch ``run.test_is_val_at`` in the
    newest training log (``<timestamp>/vis_data/scalars.json``), or None."""
    logs = sorted(glob.glob(osp.join(run.run_dir, '*', 'vis_data', 'scalars.json')),
                  key=osp.getmtime)
    for path in reversed(logs):
        with open(path) as f:
            entries = [json.loads(line) for line in f if line.strip()]
        for entry in reversed(entries):
            if entry.get('step') == run.test_is_val_at and TOP1 in entry:
                return {k: v for k, v in entry.items() if isinstance(v, (int, float))
                        and k not in ('time', 'data_time', 'memory', 'step')}
    return None


def find_test_metrics(run_dir: str, since: float) -> Optional[dict]:
    """The metrics tools/test.py wrote (``<timestamp>/<timestamp>.json``)."""
    newest = None
    for path in glob.glob(osp.join(run_dir, '*', '*.json')):
        stamp = osp.basename(osp.dirname(path))
        if osp.basename(path) != f'{stamp}.json':
            continue
        mtime = osp.getmtime(path)
        if mtime >= since - 1 and (newest is None or mtime > newest[0]):
            newest = (mtime, path)
    if newest is None:
        return None
    with open(newest[1]) as f:
        tags = json.load(f)
    # the log also has timings (time, data_time, memory): not metrics
    return {k: v for k, v in tags.items()
            if isinstance(v, (int, float)) and k not in ('time', 'data_time', 'memory')}


def execute(cmd: List[str], log_file: str, verbose: bool, extra_env: Optional[dict] = None,
            prefix: str = '') -> int:
    """Run a tool; its output goes to the log file (and the terminal if verbose)."""
    os.makedirs(osp.dirname(log_file), exist_ok=True)
    env = dict(os.environ, **(extra_env or {}))
    env['PYTHONPATH'] = os.pathsep.join(p for p in (REPO, env.get('PYTHONPATH')) if p)
    with open(log_file, 'a') as log:
        log.write(f'$ {" ".join(f"{k}={v}" for k, v in (extra_env or {}).items())}'
                  f'{" " if extra_env else ""}{" ".join(cmd)}\n')
        log.flush()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1)
        for line in proc.stdout:
            log.write(line)
            if verbose:
                sys.stdout.write(prefix + line)
        return proc.wait()


def tail(path: str, lines: int = 30) -> str:
    """The last ``lines`` of a log ('' when unreadable)."""
    try:
        with open(path, errors='replace') as f:
            return ''.join(f.readlines()[-lines:])
    except OSError:
        return ''


def run_one(run: Run, index: int, total: int, launch: Launch, verbose: bool,
            dry_run: bool) -> bool:
    """Train and test one run unless done; False when a step failed.

    Args:
        run (Run): The run.
        index (int): Its number, for the progress lines.
        total (int): The number of runs of the suite.
        launch (Launch): Where and how its tools start.
        verbose (bool): Show the tools' output too.
        dry_run (bool): Print the commands instead of running them.
    """
    head = f'[{index}/{total}] {run.label}'
    results = osp.join(run.run_dir, RESULTS)
    if osp.isfile(results):
        print(f'{head}: done, skipped ({results})', flush=True)
        return True
    train_done = osp.isfile(osp.join(run.run_dir, TRAIN_DONE))
    resume = not train_done and osp.isfile(osp.join(run.run_dir, 'last_checkpoint'))
    if dry_run:
        if not train_done:
            print(f'{head}: would {"resume" if resume else "train"}:\n  '
                  f'{shown(train_command(run, launch, resume), launch)}')
        print(f'{head}: would test:\n  '
              f'{shown(test_command(run, launch, "<checkpoint>"), launch)}', flush=True)
        return True
    where = f' on devices {",".join(launch.devices)}' if launch.devices else ''
    prefix = f'[{run.label}] ' if launch.devices or launch.partition else ''
    start = time.time()
    if not train_done:
        print(f'{head}: {"resuming" if resume else "training"} in {run.run_dir}{where}',
              flush=True)
        log = osp.join(run.run_dir, 'run_suite_train.log')
        if execute(train_command(run, launch, resume), log, verbose, launch.env(), prefix):
            print(f'{head}: training FAILED; log {log}:\n{tail(log)}', flush=True)
            return False
        write_json(osp.join(run.run_dir, TRAIN_DONE), dict(seconds=round(time.time() - start, 1)))
    try:
        checkpoint = find_checkpoint(run)
    except RuntimeError as e:
        print(f'{head}: FAILED: {e}', flush=True)
        return False
    metrics = last_validation(run) if run.test_is_val_at else None
    if metrics:
        record = dict(config=osp.relpath(run.config, REPO), method=run.method,
                      dataset=run.dataset, shot=run.shot, seed=run.seed, checkpoint=checkpoint,
                      metrics=metrics, options=run.options,
                      metrics_from=f'validation of epoch {run.test_is_val_at} (the test '
                      'loader is the val loader)',
                      minutes=round((time.time() - start) / 60, 2))
        write_json(results, record)
        print(f'{head}: {", ".join(f"{k}={v:.2f}" for k, v in metrics.items())} '
              f'(last validation = test)', flush=True)
        return True
    print(f'{head}: testing {osp.basename(checkpoint)}{where}', flush=True)
    log = osp.join(run.run_dir, 'run_suite_test.log')
    since = time.time()
    if execute(test_command(run, launch, checkpoint), log, verbose, launch.env(), prefix):
        print(f'{head}: test FAILED; log {log}:\n{tail(log)}', flush=True)
        return False
    metrics = find_test_metrics(run.run_dir, since)
    if not metrics:
        print(f'{head}: FAILED: tools/test.py wrote no metrics json under {run.run_dir}',
              flush=True)
        return False
    record = dict(config=osp.relpath(run.config, REPO), method=run.method, dataset=run.dataset,
                  shot=run.shot, seed=run.seed, checkpoint=checkpoint, metrics=metrics,
                  options=run.options, minutes=round((time.time() - start) / 60, 2))
    write_json(results, record)
    top1 = ', '.join(f'{k}={v:.2f}' for k, v in metrics.items() if 'top1' in k)
    print(f'{head}: {top1 or metrics}', flush=True)
    return True
