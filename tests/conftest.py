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


def _load_cli(relpath: str):
    """Import a script under tools/ as a module, to call its ``main(argv)``.

    The one place tests load a script by file path, and only to test its
    command line in process (no interpreter start-up); anything else a tool
    does lives in the package and is imported normally.
    """
    import importlib.util
    path = REPO / relpath
    name = '_cli_' + relpath.replace('/', '_').replace('.', '_')
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='session')
def load_cli():
    """``load_cli('tools/train.py').main(argv)``: a tool's command line in process."""
    return _load_cli
