"""Python API: the jobs of ``tools/`` as functions, and inference.

``from mmdtl.apis import train, test`` trains and evaluates a config as
``tools/train.py`` and ``tools/test.py`` do (docs/python_api.md).
:class:`MultiTaskInferencer` serves several task checkpoints on one frozen
backbone.
"""
from mmdtl.models import MultiTaskInferencer

from .jobs import test, train

__all__ = ['train', 'test', 'MultiTaskInferencer']
