"""Do two checkouts of mmdtl compute the same? Logits, side-network gradients
and bytes saved for backward of the same DTL models, side by side.

A refactor of how blocks run must not move a number the README quotes. This
tool builds a fixed set of small DTL backbones (the demo's ViT, a 12-block
ViT, a 4-stage Swin; each plain and with the memory options that exist in
both trees) from identical weights and images, runs one fp32 and one bf16
autocast training step in each checkout (one process per checkout, its own
``mmdtl`` first on ``sys.path``) and prints, per model and precision, whether
logits and gradients are bit-identical and the bytes autograd saved for
backward before and after.

Example (the checkout before a change, in a git worktree)::

    git worktree add /tmp/before HEAD~3
    python tools/analysis/compare_revisions.py /tmp/before .
"""
import argparse
import os
import subprocess
import sys
import tempfile

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
}


def run_cases(out_file: str) -> None:
    """In this process's mmdtl: every model x option x precision that builds."""
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


def compare(before: dict, after: dict) -> list:
    """One line per case: equality of logits and gradients, saved bytes."""
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('before', help='checkout (repository root) before the change')
    parser.add_argument('after', nargs='?', default='.', help='checkout after (default: .)')
    parser.add_argument('--run-cases', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_cases:
        run_cases(args.run_cases)
        return
    import torch
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for tree in (args.before, args.after):
            tree = os.path.abspath(tree)
            if not os.path.isdir(os.path.join(tree, 'mmdtl')):
                parser.error(f'{tree}: not an mmdtl checkout (no mmdtl/ folder)')
            out = os.path.join(tmp, f'{len(results)}.pt')
            env = dict(os.environ, PYTHONPATH=tree + os.pathsep + os.environ.get('PYTHONPATH', ''))
            subprocess.run([sys.executable, os.path.abspath(__file__), tree, '--run-cases', out],
                           check=True, env=env, cwd=tree, stdout=subprocess.DEVNULL)
            results.append(torch.load(out, weights_only=True))
    print('\n'.join(compare(*results)))


if __name__ == '__main__':
    main()
