"""Do two checkouts of mmdtl compute the same? Logits, side-network gradients
and bytes saved for backward of the same DTL models, side by side.

A refactor of how blocks run must not move a number the README quotes. This
tool builds a fixed set of small DTL backbones (the demo's ViT, a 12-block
ViT, a 4-stage Swin; each plain and with the memory options that exist in
both trees) from identical weights and images, runs one fp32 and one bf16
autocast training step in each checkout (one process per checkout, its own
``mmdtl`` first on ``sys.path``) and prints, per model and precision, whether
logits and gradients are bit-identical and the bytes autograd saved for
backward before and after. The cases and the comparison live in
:mod:`mmdtl.analysis.compare_revisions`.

Example (the checkout before a change, in a git worktree)::

    git worktree add /tmp/before HEAD~3
    python tools/analysis/compare_revisions.py /tmp/before .
"""
import argparse

from mmdtl.analysis.compare_revisions import compare_checkouts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('before', help='checkout (repository root) before the change')
    parser.add_argument('after', nargs='?', default='.', help='checkout after (default: .)')
    args = parser.parse_args(argv)
    try:
        lines = compare_checkouts(args.before, args.after)
    except NotADirectoryError as e:
        parser.error(str(e))
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
