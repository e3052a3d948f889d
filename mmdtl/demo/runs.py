"""What every demo run shares: the shipped backbone, one run in this process,
the memory of one of its training steps, and the key under which its result
is reused.

A demo run is a real mmengine ``Runner`` built from a config
(``tools/train.py`` + ``tools/test.py`` in one process, which saves the
import cost of two processes per run). After its test, one more training step
of the same runner is measured with the meters of
``tools/analysis/benchmark.py``: bytes autograd saves for backward and the
step's tensor peak (live tensors + the peak of the CPU allocator trace).
"""
import contextlib
import hashlib
import json
import os
import os.path as osp
import sys
import time
from typing import Callable, Dict, Optional, Tuple

from mmdtl.utils.checkpoint import file_sha256

# The repository: the demos' configs are relative to it.
REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
# The shipped pre-trained demo ViT (relative to the repository, as the
# configs name it).
CHECKPOINT = 'checkpoints/demo/vit-demo_fashion-mnist.pth'
RESULT = 'result.json'


def resolve_checkpoint(path: str) -> str:
    """``path`` as given, or inside the repository when it is the relative
    name of a file there and not here (the demos run from any folder)."""
    if osp.isabs(path) or osp.isfile(path) or not osp.isfile(osp.join(REPO, path)):
        return osp.abspath(path)
    return osp.join(REPO, path)


def check_checkpoint(path: str = CHECKPOINT) -> str:
    """The backbone's SHA-256; an error if it is missing, a note if it is not
    the one recorded in ``SHA256SUMS`` next to it (re-created by the
    pre-training tool, or another file).

    Args:
        path (str): The pre-trained backbone. Defaults to the shipped one.
    """
    full = resolve_checkpoint(path)
    if not osp.isfile(full):
        raise SystemExit(f'Pre-trained backbone {path} not found. It is shipped with the '
                         'repository; re-create it with '
                         'python tools/misc/pretrain_demo_backbone.py')
    digest = file_sha256(full)
    sums = osp.join(osp.dirname(full), 'SHA256SUMS')
    recorded = {}
    if osp.isfile(sums):
        with open(sums, encoding='utf-8') as f:
            recorded = {line.split()[-1]: line.split()[0] for line in f if line.strip()}
    if recorded.get(osp.basename(full)) != digest:
        print(f'Note: {path} has sha256 {digest}, not the one recorded in {sums}: '
              'results will differ from the README.', flush=True)
    return digest


def set_backbone_checkpoint(cfg, checkpoint: str) -> None:
    """Point the config's pre-trained backbone (inside LoRAModel too) at
    ``checkpoint``; a random-trunk config stays random."""
    backbone = cfg.model.backbone
    if backbone.get('type') == 'LoRAModel':
        backbone = backbone.module
    init_cfg = backbone.get('init_cfg')
    if isinstance(init_cfg, dict) and init_cfg.get('type') == 'Pretrained':
        init_cfg.checkpoint = checkpoint


def for_one_run(cfg, seed: int, work_dir: str) -> None:
    """Make ``cfg`` one demo run: trained, then tested once (no validation
    during training, no checkpoints written)."""
    cfg.work_dir = work_dir
    cfg.randomness = dict(seed=seed, deterministic=False)
    cfg.val_cfg = cfg.val_dataloader = cfg.val_evaluator = None
    cfg.train_cfg.pop('val_interval', None)
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=-1, save_last=False)


def unwrap_model(model):
    """The model inside a (distributed) wrapper."""
    return model.module if hasattr(model, 'module') else model


def trainable(module) -> int:
    """Number of parameters that train."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def measure_step(runner) -> Dict[str, float]:
    """Memory of one more training step of ``runner`` on its first batch:
    activations saved for backward and the step's tensor peak (MB)."""
    from mmdtl.utils import cpu_step_peak_bytes, saved_activation_bytes
    from mmdtl.utils.memory import training_state

    model = unwrap_model(runner.model)
    model.train()
    data = next(iter(runner.train_dataloader))
    processed = model.data_preprocessor(data, True)

    def loss_fn():
        loss, _ = model.parse_losses(model(**processed, mode='loss'))
        return loss

    activation = saved_activation_bytes(model, loss_fn)
    runner.optim_wrapper.zero_grad()
    # what lives across steps; the step's own input batch counts in its peak
    live = training_state(model, runner.optim_wrapper.optimizer)
    peak = cpu_step_peak_bytes(lambda: model.train_step(data, runner.optim_wrapper), live)
    return dict(activation_mb=activation / 2**20, tensor_peak_mb=peak / 2**20)


@contextlib.contextmanager
def output_to(path: str):
    """The run's console output into a file: mmengine's logger, warnings,
    and what C++ code (the profiler) writes to the file descriptors."""
    os.makedirs(osp.dirname(path), exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, 'a') as f:
        try:
            os.dup2(f.fileno(), 1)
            os.dup2(f.fileno(), 2)
            with contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
                yield
        finally:
            f.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def close_logger(runner) -> None:
    """Close the runner's log handlers: mmengine keeps a logger instance by
    name after the runner, and its handlers point at the closed redirected
    stream."""
    for handler in list(runner.logger.handlers):
        runner.logger.removeHandler(handler)
        handler.close()


def run_config(cfg, log_name: str, measure: bool = True) -> Tuple[dict, dict]:
    """Train, then test one config in this process, its output going to
    ``log_name`` in the run's folder.

    Returns:
        tuple: The test metrics, and the run's figures: ``train_s``,
        ``test_s``, trainable parameters of the backbone and in all, and
        (``measure``) the memory of one more training step.
    """
    from mmengine.runner import Runner

    with output_to(osp.join(cfg.work_dir, log_name)):
        runner = Runner.from_cfg(cfg)
        try:
            tic = time.perf_counter()
            runner.train()
            train_s = time.perf_counter() - tic
            tic = time.perf_counter()
            metrics = runner.test()
            test_s = time.perf_counter() - tic
            model = unwrap_model(runner.model)
            figures = dict(train_s=train_s, test_s=test_s,
                           trainable_backbone=trainable(model.backbone),
                           trainable_total=trainable(model))
            if measure:
                figures.update(measure_step(runner))
        finally:
            close_logger(runner)
    return metrics, figures


def reuse_or_run(path: str, key: str, measure: bool, force: bool,
                 run: Callable[[], dict]) -> dict:
    """The record in ``path`` when :func:`reusable` (and not ``force``),
    else ``run()``'s record, written there atomically."""
    from mmdtl.utils.report import write_json

    record = None if force else reusable(path, key, measure)
    if record is None:
        record = run()
        write_json(path, record)
    return record


def run_key(cfg, seed: int, backbone_sha: str) -> str:
    """What decides a run's result: its full config, seed and backbone."""
    text = f'{cfg.pretty_text}\nseed={seed}\nbackbone={backbone_sha}'
    return hashlib.sha256(text.encode()).hexdigest()


def reusable(path: str, key: str, measure: bool) -> Optional[dict]:
    """The record in ``path`` when it was made under ``key`` (and measured
    the memory when ``measure``), marked ``reused``; else None."""
    if not osp.isfile(path):
        return None
    with open(path) as f:
        record = json.load(f)
    if record.get('key') == key and (record.get('activation_mb') is not None or not measure):
        record['reused'] = True
        return record
    return None
