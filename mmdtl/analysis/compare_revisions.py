"""Do two checkouts of mmdtl compute the same? Logits, side-network gradients
and bytes saved for backward of the same DTL models, side by side.

:func:`compare_checkouts` runs :func:`run_cases` once per checkout, each in
a child process whose ``mmdtl`` is that checkout's, and :func:`compare`
turns the two results into a markdown table. ``tools/analysis/compare_revisions.py``
is the command line.

The child runs *this file* by its path (``python .../compare_revisions.py
--run-cases OUT``), not ``import mmdtl.analysis.compare_revisions``: the
cases must be the same in both children, and the checkout before a change
may not have this module at all. This file therefore imports only the
standard library at module level; ``mmdtl`` is imported inside
:func:`run_cases`, from the checkout on ``PYTHONPATH``.
"""
import argparse
import os
import subprocess
import sys
import tempfile
from typing import List

TINY_VIT = dict(embed_dims=32, num_layers=12, num_heads=2, feedforward_channels=64)
DEMO_VIT = dict(embed_dims=96, num_layers=6, num_heads=3, feedforward_channels=384)
SWIN = dict(embed_dims=16, depths=[2, 2, 6, 2], num_heads=[1, 2, 2, 4])
# name: (backbone config, image size, channels)
MODELS = {
    'demo-vit': (dict(type='DTLViT', arch=DEMO_VIT, img_size=28, patch_size=7, in_channels=1,
                      drop_path_rate=0.,
                      csn=dict(type='CompactSideNetwork', rank=2, taps=list(range(6)),
                               start=3, dwconv_kernel=3)), 28, 1),
    'vit-12': (dict(type='DTLViT', arch=TINY_VIT, img_size=32, patch_size=8, drop_path_rate=0.,
                    csn=dict(type='CompactSideNetwork', rank=2, start=6, dwconv_kernel=3)),
               32, 3),
    'swin': (dict(type='DTLSwin', arch=SWIN, img_size=64, window_size=4, pad_small_map=True,
                  drop_path_rate=0.,
                  csn=dict(type='CompactSideNetwork', rank=4, taps=list(range(4, 12)), start=7,
                           dwconv_kernel=5)), 64, 3),
}
OPTIONS = {
    'plain': {},
    'checkpoint_suffix': dict(checkpoint_suffix=True),
    'prefix_cache': dict(prefix_cache=dict(storage='memory')),
    'recompute_prefix_taps': dict(recompute_prefix_taps=True),
    # Every recomputation of the suffix at once (a tree without one of them
    # reports the case as not built).
    'recomputed_suffix': dict(checkpoint_suffix=True, recompute_running_sums=True,
                              checkpoint_sublayers=True),
}


def run_cases(out_file: str) -> None:
    """In this process's mmdtl: every model x option x precision that
    builds; the results (logits, CSN gradients, saved bytes, or why a case
    was not built) are saved to ``out_file`` with ``torch.save``."""
    import torch
    from mmpretrain.registry import MODELS as REGISTRY

    import mmdtl  # noqa: F401

    results = {}
    for name, (cfg, size, channels) in MODELS.items():
        weights = None
        for option, kwargs in OPTIONS.items():
            torch.manual_seed(0)
            try:
                model = REGISTRY.build({**cfg, **kwargs})
            except (TypeError, ValueError) as e:  # an option this tree lacks
                results[name, option] = f'not built: {e}'.splitlines()[0]
                continue
            if weights is None:  # the same random weights for every option
                gen = torch.Generator().manual_seed(3)
                weights = {k: torch.randn(v.shape, generator=gen) * 0.2
                           if v.is_floating_point() else v
                           for k, v in model.state_dict().items()}
            model.load_state_dict(weights)
            model.train()
            images = torch.randn(4, channels, size, size,
                                 generator=torch.Generator().manual_seed(5))
            for autocast in (False, True):
                for _ in range(2):  # the second step reads a prefix cache
                    out, grads, saved = _step(model, images, autocast)
                results[name, option, autocast] = (out, grads, saved)
    torch.save(results, out_file)


def _step(model, images, autocast):
    import torch

    from mmdtl.utils.memory import SavedTensorMeter

    with SavedTensorMeter(exclude=model.parameters()) as meter, \
            torch.autocast('cpu', torch.bfloat16, enabled=autocast):
        out = model(images)[-1]
    model.zero_grad()
    out.float().square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.csn.named_parameters()}
    return out.detach().float(), grads, meter.bytes


def compare(before: dict, after: dict) -> List[str]:
    """One markdown line per case: equality of logits and gradients, saved bytes.

    Args:
        before (dict): :func:`run_cases`'s results of the first checkout.
        after (dict): Those of the second.
    """
    import torch
    lines = ['| model | option | precision | logits | CSN gradients | saved for backward '
             '(KiB) before -> after |', '|---|---|---|---|---|---|']
    for key in after:
        if len(key) == 2:
            continue
        name, option, autocast = key
        precision = 'bf16 autocast' if autocast else 'fp32'
        if key not in before:
            lines.append(f'| {name} | {option} | {precision} | new | new | - -> '
                         f'{after[key][2] / 1024:.1f} |')
            continue
        (out_a, grads_a, saved_a), (out_b, grads_b, saved_b) = before[key], after[key]
        logits = ('equal' if torch.equal(out_a, out_b)
                  else f'max diff {(out_a - out_b).abs().max().item():.3g}')
        grads = ('equal' if grads_a.keys() == grads_b.keys()
                 and all(torch.equal(grads_a[n], grads_b[n]) for n in grads_a) else 'differ')
        lines.append(f'| {name} | {option} | {precision} | {logits} | {grads} | '
                     f'{saved_a / 1024:.1f} -> {saved_b / 1024:.1f} |')
    return lines


def compare_checkouts(before: str, after: str) -> List[str]:
    """:func:`compare`'s lines of two checkouts (repository roots).

    Args:
        before (str): The checkout before the change.
        after (str): The checkout after it.
    """
    import torch
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for tree in (before, after):
            tree = os.path.abspath(tree)
            if not os.path.isdir(os.path.join(tree, 'mmdtl')):
                raise NotADirectoryError(f'{tree}: not an mmdtl checkout (no mmdtl/ folder)')
            out = os.path.join(tmp, f'{len(results)}.pt')
            env = dict(os.environ, PYTHONPATH=tree + os.pathsep + os.environ.get('PYTHONPATH', ''))
            subprocess.run([sys.executable, os.path.abspath(__file__), '--run-cases', out],
                           check=True, env=env, cwd=tree, stdout=subprocess.DEVNULL)
            results.append(torch.load(out, weights_only=True))
    return compare(*results)


if __name__ == '__main__':  # the child of compare_checkouts
    # Run by path, this file's folder heads sys.path: drop it so that nothing
    # here shadows a top-level module of the checkout under test.
    if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]
    parser = argparse.ArgumentParser(description='run the cases in the mmdtl on PYTHONPATH')
    parser.add_argument('--run-cases', required=True, metavar='OUT')
    run_cases(parser.parse_args().run_cases)
