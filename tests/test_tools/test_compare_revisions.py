"""mmdtl.analysis.compare_revisions: the table of what changed."""
import pytest
import torch

from mmdtl.analysis.compare_revisions import compare


def test_compare_reports_equality_differences_and_new_cases():
    out, grads = torch.ones(2, 3), {'down_projs.0': torch.zeros(2)}
    before = {('vit', 'plain', False): (out, grads, 2048),
              ('vit', 'plain', True): (out, grads, 2048),
              ('vit', 'rp'): 'not built: unexpected keyword'}
    after = {('vit', 'plain', False): (out.clone(), {'down_projs.0': torch.zeros(2)}, 1024),
             ('vit', 'plain', True): (out + 0.5, {'down_projs.0': torch.ones(2)}, 2048),
             ('vit', 'rp', False): (out, grads, 512)}
    lines = compare(before, after)
    assert lines[2] == '| vit | plain | fp32 | equal | equal | 2.0 -> 1.0 |'
    assert lines[3] == '| vit | plain | bf16 autocast | max diff 0.5 | differ | 2.0 -> 2.0 |'
    assert lines[4] == '| vit | rp | fp32 | new | new | - -> 0.5 |'


def test_the_cases_run_in_the_checkout_on_the_path(tmp_path):
    """The child runs the module file by path: the cases come from this
    checkout, ``mmdtl`` from the checkout under test (here a stand-in that
    records its import and stops)."""
    import os
    import subprocess
    import sys

    import mmdtl.analysis.compare_revisions as module
    tree = tmp_path / 'tree'
    (tree / 'mmdtl').mkdir(parents=True)
    marker = tmp_path / 'imported'
    (tree / 'mmdtl' / '__init__.py').write_text(
        f'open({str(marker)!r}, "w").write(__file__)\nraise SystemExit(3)\n')
    out = subprocess.run([sys.executable, module.__file__, '--run-cases', str(tmp_path / 'o')],
                         env=dict(os.environ, PYTHONPATH=str(tree)), cwd=tree,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 3, out.stderr[-2000:]
    assert marker.read_text() == str(tree / 'mmdtl' / '__init__.py')
    with pytest.raises(NotADirectoryError, match='not an mmdtl checkout'):
        module.compare_checkouts(str(tmp_path), str(tree))
