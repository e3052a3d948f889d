"""The demos of ``make demo`` and ``make dense-demo`` as functions: the mini-VTAB
transfer, the dense demo, the learning-rate sweep and the demo backbone's
pre-training (``tools/misc/`` only parses arguments).

``run_demo(tasks=['digits'], methods=['linear', 'dtl+'])`` is
``python tools/misc/transfer_demo.py --tasks digits --methods linear dtl+``.
"""
from .dense import run_dense_demo, sweep_dense_lrs
from .pretrain import pretrain_demo_backbone
from .sweep import sweep_demo_lrs
from .transfer import run_demo

__all__ = ['run_demo', 'run_dense_demo', 'sweep_demo_lrs', 'sweep_dense_lrs',
           'pretrain_demo_backbone']
