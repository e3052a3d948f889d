import copy
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Tests run on CPU with small models; keep BLAS from oversubscribing 2 cores.
os.environ.setdefault('OMP_NUM_THREADS', '2')
# Idle OpenMP threads sleep instead of spinning: on a busy 2-core machine the
# spinning threads of one process (or of the 2-process tests) starve the others.
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')


@pytest.fixture
def repo_root() -> Path:
    return REPO


@pytest.fixture(autouse=True)
def _restore_default_scope():
    """mmengine keeps the latest DefaultScope (set by every Runner and by
    mmdet configs) process-wide; restore it so tests do not depend on order."""
    from mmengine.registry import DefaultScope
    saved = copy.copy(DefaultScope._instance_dict)
    yield
    DefaultScope._instance_dict = saved
