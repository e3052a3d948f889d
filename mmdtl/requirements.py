"""What mmdtl needs, in one place: ``setup.py`` declares it and importing
mmdtl checks it (one line naming the package, the version found and the
range), before mmpretrain or mmcv fail in their own words.

This module imports nothing but the standard library, so that ``setup.py``
can read it without torch installed.
"""
import re
from importlib import metadata
from typing import Callable, Dict, List, Optional

#: package -> the versions mmdtl is tested on (pip specifier). torch >= 2.4:
#: ``weights_only`` loading with ``add_safe_globals``; mmcv < 2.2: what
#: mmpretrain 1.2 and mmdet 3.3 accept.
REQUIRED: Dict[str, str] = {
    'torch': '>=2.4',
    'torchvision': '',
    'mmengine': '>=0.10.7,<0.11',
    'mmcv': '>=2.0.0,<2.2.0',
    'mmpretrain': '>=1.2.0,<1.3',
    'numpy': '',
    'Pillow': '',
    'matplotlib': '',
    'scikit-learn': '',
    # pkg_resources, used by mmengine 0.10 and by mmcv's setup.py
    'setuptools': '<82',
}
#: ``pip install mmdtl[name]``: the dense-prediction codebases (optional).
EXTRAS: Dict[str, Dict[str, str]] = {
    'mmdet': {'mmdet': '>=3.3.0,<3.4'},
    # mmseg.models imports ftfy and regex, which mmsegmentation does not require
    'mmseg': {'mmsegmentation': '>=1.2.2,<1.3', 'ftfy': '', 'regex': ''},
    'tests': {'pytest': '', 'ruff': ''},
}
#: checked at ``import mmdtl`` (the rest only matter to pip)
CHECKED_AT_IMPORT = ('torch', 'mmengine', 'mmcv', 'mmpretrain')
#: other distributions that install the same module (mmcv's build without ops)
SAME_MODULE = {'mmcv': ('mmcv-lite', )}


def requirement_lines(specs: Dict[str, str]) -> List[str]:
    """``{'torch': '>=2.4'}`` -> ``['torch>=2.4']`` (pip's format)."""
    return [name + spec for name, spec in specs.items()]


def _release(version: str) -> tuple:
    """``'2.13.0+cu130'`` -> ``(2, 13, 0)``; a pre-release counts as its release."""
    match = re.match(r'\d+(\.\d+)*', version.strip())
    return tuple(int(n) for n in match.group(0).split('.')) if match else ()


def satisfies(version: str, spec: str) -> bool:
    """Whether ``version`` (e.g. ``'2.1.0+cpu'``) meets ``spec`` (e.g.
    ``'>=2.0,<2.2'``), comparing release numbers only."""
    have = _release(version)
    for clause in filter(None, (c.strip() for c in spec.split(','))):
        op = clause[:2] if clause[:2] in ('>=', '<=', '==', '!=') else clause[:1]
        want = _release(clause[len(op):])
        width = max(len(have), len(want))
        a, b = have + (0, ) * (width - len(have)), want + (0, ) * (width - len(want))
        ok = {'>=': a >= b, '<=': a <= b, '==': a == b, '!=': a != b, '>': a > b,
              '<': a < b}[op]
        if not ok:
            return False
    return True


def check_requirements(version_of: Optional[Callable[[str], str]] = None) -> None:
    """Raise one ``ImportError`` line for the first package of
    :data:`CHECKED_AT_IMPORT` that is missing or outside its range.

    Args:
        version_of (Callable, optional): Package name -> installed version;
            defaults to the installed distributions' metadata.
    """
    version_of = version_of or metadata.version
    for name in CHECKED_AT_IMPORT:
        spec = REQUIRED[name]
        version = None
        for distribution in (name, ) + SAME_MODULE.get(name, ()):
            try:
                version = version_of(distribution)
                break
            except metadata.PackageNotFoundError:
                continue
        if version is None:
            raise ImportError(f'mmdtl needs {name}{spec}, which is not installed: '
                              f'pip install "{name}{spec}" (mmcv: see docs/installation.md)'
                              ) from None
        if not satisfies(version, spec):
            raise ImportError(f'mmdtl needs {name}{spec} but {name} {version} is installed: '
                              f'pip install "{name}{spec}" (tested versions: '
                              'docs/installation.md)')
