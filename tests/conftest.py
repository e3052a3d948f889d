import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Tests run on CPU with small models; keep BLAS from oversubscribing 2 cores.
os.environ.setdefault('OMP_NUM_THREADS', '2')


@pytest.fixture
def repo_root() -> Path:
    return REPO
