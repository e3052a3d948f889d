"""CompactSideNetwork alone: initialisation order, the running sum, the side
output, stage restarts and recomputed prefix taps on small dims."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import mmdtl  # noqa: F401
from mmdtl.models import CompactSideNetwork
from mmdtl.models.side_network import swish


def test_down_projections_are_drawn_in_block_order():
    """The release creates A_1, A_2, ... in block order; the ParameterDicts
    sort their keys as strings ('10' before '2'), so drawing in key order
    would give block 2 the fifth draw of a 12-block network."""
    torch.manual_seed(0)
    csn = CompactSideNetwork(embed_dims=8, num_layers=12, rank=2, start=6)
    assert list(csn.down_projs)[:4] == ['0', '1', '10', '11']  # key order
    torch.manual_seed(0)
    expected = []
    for _ in range(12):
        weight = torch.empty(2, 8)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        expected.append(weight)
    torch.manual_seed(0)
    csn.reset_parameters()
    for index in range(12):
        assert torch.equal(csn.down_projs[str(index)], expected[index]), index
        assert not csn.up_projs[str(index)].any()


def test_running_sum_side_output_and_stage_restart():
    """Two stages of 2 blocks (dims 4 and 6): the sum restarts at block 2;
    h and g(swish(h)) against a direct computation, 'same' padding of an
    even kernel, the cls token swish only."""
    torch.manual_seed(0)
    csn = CompactSideNetwork(embed_dims=[4, 4, 6, 6], num_layers=4, rank=3, taps=[0, 1, 2, 3],
                             start=1, dwconv_kernel=2, stages=[0, 0, 1, 1], beta=10.)
    for up in csn.up_projs.values():
        nn.init.normal_(up)
    z = [torch.randn(2, 1 + 9, 4), torch.randn(2, 1 + 9, 4), torch.randn(2, 1 + 4, 6)]
    h = csn.tap(0, z[0], None)
    h = csn.tap(1, z[1], h)
    expected = sum(x @ csn.down_projs[str(i)].T @ csn.up_projs[str(i)].T
                   for i, x in enumerate(z[:2]))
    torch.testing.assert_close(h, expected)
    out = csn.add_back(1, torch.zeros_like(z[1]), h, (3, 3), num_extra_tokens=1)
    act = expected * torch.sigmoid(10. * expected)
    patches = act[:, 1:].transpose(1, 2).reshape(2, 4, 3, 3)
    patches = F.conv2d(F.pad(patches, (0, 1, 0, 1)), csn.dwconvs['0'].weight, groups=4)
    torch.testing.assert_close(out[:, :1], act[:, :1])
    torch.testing.assert_close(out[:, 1:], patches.flatten(2).transpose(1, 2))
    # Block 2 starts stage 1: the sum restarts with its own tap only.
    h2 = csn.tap(2, z[2], h)
    torch.testing.assert_close(h2, z[2] @ csn.down_projs['2'].T @ csn.up_projs['2'].T)
    assert sorted(csn.dwconvs) == ['0', '1']
    # Before M nothing is added.
    assert torch.equal(csn.add_back(0, z[0], h, (3, 3), 1), z[0])


def test_recomputed_prefix_taps_equal_stored_taps():
    """h and the A/B gradients of the prefix taps computed by re-running the
    prefix in backward equal those of taps on stored inputs."""
    torch.manual_seed(0)
    csn = CompactSideNetwork(embed_dims=5, num_layers=4, rank=2, start=2)
    for up in csn.up_projs.values():
        nn.init.normal_(up)
    blocks = [nn.Linear(5, 5).requires_grad_(False) for _ in range(3)]
    images = torch.randn(3, 7, 5)

    def run_prefix(x, on_tap):
        for index, block in enumerate(blocks):
            on_tap(index, x)
            x = block(x)
        return x, 'aux'

    h, out, aux = csn.recomputed_prefix_taps(run_prefix, images)
    assert aux == 'aux' and not out.requires_grad
    (h.square().sum() + h.sum()).backward()
    grads = {n: p.grad.clone() for n, p in csn.named_parameters() if p.grad is not None}
    csn.zero_grad()
    stored, x = None, images
    with torch.no_grad():
        inputs = []
        for block in blocks:
            inputs.append(x)
            x = block(x)
    for index, x in enumerate(inputs):
        stored = csn.tap(index, x, stored)
    torch.testing.assert_close(h, stored, rtol=0, atol=0)
    (stored.square().sum() + stored.sum()).backward()
    assert sorted(grads) == sorted(f'{kind}.{i}' for kind in ('down_projs', 'up_projs')
                                   for i in range(3))
    for name, param in csn.named_parameters():
        if name in grads:
            torch.testing.assert_close(grads[name], param.grad, rtol=0, atol=0, msg=name)


def test_sparse_add_back_adds_only_at_the_named_blocks():
    """add_back_blocks: the side output is added after those blocks only; M
    is the first of them; taps between them keep accumulating."""
    torch.manual_seed(0)
    csn = CompactSideNetwork(embed_dims=4, num_layers=6, rank=2, taps=[0, 2, 4],
                             add_back_blocks=[5, 3])
    assert csn.start == 3 and csn.adds_back == [3, 5] and csn.taps == [0, 2, 4]
    for up in csn.up_projs.values():
        nn.init.normal_(up)
    z = torch.randn(2, 9, 4)
    h = csn.tap(0, z, None)
    for index in (1, 2, 4):
        assert torch.equal(csn.add_back(index, z, h, (3, 3)), z), index
    for index in (3, 5):
        torch.testing.assert_close(csn.add_back(index, z, h, (3, 3)), z + swish(h, csn.beta))
    # The same with start given and consistent.
    same = CompactSideNetwork(embed_dims=4, num_layers=6, taps=[0, 2, 4], start=3,
                              add_back_blocks=[3, 5])
    assert same.adds_back == [3, 5]
    # Dense by default: every block from M adds back.
    assert CompactSideNetwork(embed_dims=4, num_layers=6, start=4).adds_back == [4, 5]


@pytest.mark.parametrize('kwargs,match', [
    (dict(add_back_blocks=[]), 'csn.add_back_blocks must name at least one block'),
    (dict(add_back_blocks=[1, 6]), r'csn.add_back_blocks .* \[0, 5\].* \[6\]'),
    (dict(add_back_blocks=[3, 5], start=2), r'csn.start=2 .* first of csn.add_back_blocks'),
    # Block 5's tap comes after the last add-back: it would never be used.
    (dict(add_back_blocks=[3], taps=[0, 5]), r'csn.taps \[5\] .* never be used'),
    (dict(add_back_blocks=[1, 4], taps=[2, 3]), r'block 1 adds back .* no tap'),
])
def test_bad_sparse_options_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CompactSideNetwork(embed_dims=4, num_layers=6, **kwargs)


@pytest.mark.parametrize('kwargs,match', [
    (dict(rank=0), 'csn.rank'),
    (dict(start=4), r'csn.start .* \[0, 3\]'),
    (dict(taps=[]), 'at least one block'),
    (dict(dwconv_kernel=-1), 'csn.dwconv_kernel'),
])
def test_bad_options_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CompactSideNetwork(embed_dims=4, num_layers=4, **kwargs)
