"""tools/analysis/compare_revisions.py: the table of what changed."""
import importlib.util
import os.path as osp

import torch

TOOL = osp.join(osp.dirname(__file__), '..', '..', 'tools', 'analysis', 'compare_revisions.py')


def load_tool():
    spec = importlib.util.spec_from_file_location('compare_revisions', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_reports_equality_differences_and_new_cases():
    tool = load_tool()
    out, grads = torch.ones(2, 3), {'down_projs.0': torch.zeros(2)}
    before = {('vit', 'plain', False): (out, grads, 2048),
              ('vit', 'plain', True): (out, grads, 2048),
              ('vit', 'rp'): 'not built: unexpected keyword'}
    after = {('vit', 'plain', False): (out.clone(), {'down_projs.0': torch.zeros(2)}, 1024),
             ('vit', 'plain', True): (out + 0.5, {'down_projs.0': torch.ones(2)}, 2048),
             ('vit', 'rp', False): (out, grads, 512)}
    lines = tool.compare(before, after)
    assert lines[2] == '| vit | plain | fp32 | equal | equal | 2.0 -> 1.0 |'
    assert lines[3] == '| vit | plain | bf16 autocast | max diff 0.5 | differ | 2.0 -> 2.0 |'
    assert lines[4] == '| vit | rp | fp32 | new | new | - -> 0.5 |'
