"""The demos of ``make demo`` and ``make dense-demo`` as functions: the mini-VTAB
transfer, the dense demo, the learning-rate sweep and the demo backbone's
pre-training (``tools/misc/`` only parses arguments)."""
