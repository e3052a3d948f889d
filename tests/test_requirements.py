"""Declared dependencies: setup.py declares mmdtl/requirements.py, and
`import mmdtl` names a version outside its range in one line."""
import subprocess
import sys
from pathlib import Path

import pytest

from mmdtl.requirements import EXTRAS, REQUIRED, check_requirements, requirement_lines

REPO = Path(__file__).resolve().parents[1]
TESTED = {'torch': '2.13.0+cu130', 'mmengine': '0.10.7', 'mmcv': '2.1.0', 'mmpretrain': '1.2.0'}


def test_tested_versions_pass_and_others_give_one_line():
    check_requirements(TESTED.__getitem__)
    for name, version, want in [
            ('mmcv', '2.2.0', 'mmdtl needs mmcv>=2.0.0,<2.2.0 but mmcv 2.2.0 is installed'),
            ('mmcv', '1.7.2', 'mmdtl needs mmcv>=2.0.0,<2.2.0 but mmcv 1.7.2 is installed'),
            ('torch', '2.3.1', 'mmdtl needs torch>=2.4 but torch 2.3.1 is installed'),
            ('mmpretrain', '1.3.0rc0', 'mmdtl needs mmpretrain>=1.2.0,<1.3 but mmpretrain '
             '1.3.0rc0 is installed')]:
        versions = dict(TESTED, **{name: version})
        with pytest.raises(ImportError) as error:
            check_requirements(versions.__getitem__)
        message = str(error.value)
        assert message.startswith(want) and '\n' not in message

    def without_mmpretrain(name):
        from importlib.metadata import PackageNotFoundError
        if name == 'mmpretrain':
            raise PackageNotFoundError(name)
        return TESTED[name]

    with pytest.raises(ImportError, match=r'^mmdtl needs mmpretrain>=1.2.0,<1.3, which is not '
                       'installed'):
        check_requirements(without_mmpretrain)

    def lite(name):  # mmcv built without ops installs the module as mmcv-lite
        from importlib.metadata import PackageNotFoundError
        versions = dict(TESTED, **{'mmcv-lite': '2.1.0'})
        versions.pop('mmcv')
        if name not in versions:
            raise PackageNotFoundError(name)
        return versions[name]

    check_requirements(lite)


def test_import_mmdtl_with_an_incompatible_mmcv(tmp_path):
    # a distribution's metadata earlier on sys.path is the one importlib finds
    info = tmp_path / 'mmcv-2.2.0.dist-info'
    info.mkdir()
    (info / 'METADATA').write_text('Metadata-Version: 2.1\nName: mmcv\nVersion: 2.2.0\n')
    result = subprocess.run([sys.executable, '-c', 'import mmdtl'], cwd=REPO,
                            env={'PYTHONPATH': f'{tmp_path}:{REPO}', 'PATH': '/usr/bin:/bin'},
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        'ImportError: mmdtl needs mmcv>=2.0.0,<2.2.0 but mmcv 2.2.0 is installed: pip install '
        '"mmcv>=2.0.0,<2.2.0" (tested versions: docs/installation.md)')


def test_setup_declares_the_requirements(tmp_path):
    subprocess.run([sys.executable, 'setup.py', '-q', 'egg_info', '--egg-base', str(tmp_path)],
                   cwd=REPO, check=True, capture_output=True, timeout=120)
    requires = (tmp_path / 'mmdtl.egg-info' / 'requires.txt').read_text().split('\n\n')
    declared = set(requires[0].split())

    def normalised(line):  # setuptools sorts a specifier's clauses
        name = line.split('>')[0].split('<')[0].split('=')[0]
        return name, frozenset(line[len(name):].split(',')) - {''}

    assert {normalised(r) for r in declared} == {normalised(r)
                                                 for r in requirement_lines(REQUIRED)}
    extras = {block.split('\n')[0].strip('[]'): set(block.split('\n')[1:]) - {''}
              for block in requires[1:]}
    assert {normalised(r) for r in extras['mmdet']} == {
        normalised(r) for r in requirement_lines(EXTRAS['mmdet'])}
    assert 'mmsegmentation<1.3,>=1.2.2' in extras['all'] and 'mmdet<3.4,>=3.3.0' in extras['all']
    # the environment this suite runs in is inside the declared ranges
    check_requirements()
