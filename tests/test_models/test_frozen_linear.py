"""Frozen linear weights prepacked for oneDNN: same logits and gradients as
the default kernels, repacked when the weights change, never used for a
trainable layer, under autocast, or in the saved state."""
import copy
import pickle

import pytest
import torch
import torch.nn.functional as F
from mmpretrain.registry import MODELS

import mmdtl  # noqa: F401
from mmdtl.models import FrozenLinearPacks, packing_available
from mmdtl.utils import saved_activation_bytes

pytestmark = pytest.mark.skipif(not packing_available(), reason='torch built without oneDNN')

TINY_VIT = dict(type='DTLViT', img_size=32, patch_size=8, drop_path_rate=0.1,
                arch=dict(embed_dims=32, num_layers=6, num_heads=2, feedforward_channels=64),
                csn=dict(type='CompactSideNetwork', rank=2, start=3, dwconv_kernel=3))
TINY_SWIN = dict(type='DTLSwin', arch=dict(embed_dims=16, depths=[2, 2], num_heads=[2, 2]),
                 img_size=32, window_size=2, out_indices=(1, ), drop_path_rate=0.1,
                 csn=dict(type='CompactSideNetwork', rank=2, start=1, dwconv_kernel=3))


def build(cfg, **kwargs):
    torch.manual_seed(0)
    model = MODELS.build(dict(cfg, **kwargs))
    for up in model.csn.up_projs.values():
        torch.nn.init.normal_(up, std=0.3)  # zero-initialised: make the side output count
    return model


def logits_and_grads(model, images, seed=1):
    model.train()
    torch.manual_seed(seed)  # same drop-path draws in both runs
    out = model(images)[-1]
    model.zero_grad()
    (out ** 2).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                          if p.requires_grad}


def assert_same(a, b):
    torch.testing.assert_close(a[0], b[0], rtol=1e-5, atol=1e-5)
    assert a[1].keys() == b[1].keys() and len(a[1]) > 0
    for name in a[1]:
        torch.testing.assert_close(a[1][name], b[1][name], rtol=1e-4, atol=1e-5, msg=name)


def test_packed_linear_function_equals_f_linear():
    torch.manual_seed(0)
    weight, bias = torch.randn(48, 32), torch.randn(48)
    x = torch.randn(3, 7, 32, requires_grad=True)
    packs = FrozenLinearPacks()
    with packs.active():
        y = F.linear(x, weight, bias)
    grad_out = torch.randn_like(y)
    (grad,) = torch.autograd.grad(y, x, grad_out)
    x_ref = x.detach().requires_grad_()
    y_ref = F.linear(x_ref, weight, bias)
    (grad_ref,) = torch.autograd.grad(y_ref, x_ref, grad_out)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-5)
    # One packed copy for the forward, one of W.T for the backward.
    assert len(packs) == 2


@pytest.mark.parametrize('cfg', [TINY_VIT, TINY_SWIN], ids=['vit', 'swin'])
def test_packing_keeps_logits_and_gradients(cfg):
    images = torch.randn(2, 3, 32, 32)
    plain = build(cfg)
    packed = build(cfg, pack_frozen_weights=True)
    packed.load_state_dict(plain.state_dict())
    assert_same(logits_and_grads(plain, images), logits_and_grads(packed, images))
    # Every frozen linear of the trunk got packed, the suffix ones twice.
    linears = [m for m in packed.modules() if isinstance(m, torch.nn.Linear)]
    assert len(packed.frozen_linear_packs) > len(linears)
    # Packing changes kernels, not what autograd keeps for backward.
    def loss(model):
        return lambda: model(images)[-1].sum()
    assert saved_activation_bytes(packed, loss(packed)) == \
        saved_activation_bytes(plain, loss(plain))


def test_packing_with_checkpointed_suffix_and_prefix_cache():
    images = torch.randn(2, 3, 32, 32)
    plain = build(TINY_VIT, drop_path_rate=0.0)
    packed = build(TINY_VIT, drop_path_rate=0.0, pack_frozen_weights=True,
                   checkpoint_suffix=True, prefix_cache=dict(storage='memory'))
    packed.load_state_dict(plain.state_dict())
    expected = logits_and_grads(plain, images)
    assert_same(expected, logits_and_grads(packed, images))  # fills the cache
    assert_same(expected, logits_and_grads(packed, images))  # from the cache
    assert packed.prefix_cache.hits == 2


def test_packs_follow_new_weights():
    images = torch.randn(2, 3, 32, 32)
    model = build(TINY_VIT, pack_frozen_weights=True).eval()
    with torch.no_grad():
        model(images)
        other = build(TINY_VIT, pack_frozen_weights=True).eval()
        for p in other.parameters():
            p.add_(0.1 * torch.randn_like(p))
        model.load_state_dict(other.state_dict())  # in place: new versions
        torch.testing.assert_close(model(images)[0], other(images)[0], rtol=1e-5, atol=1e-5)
        model.layers[0].ffn.layers[1].weight.data = torch.zeros(32, 64)  # new storage
        other.layers[0].ffn.layers[1].weight.data = torch.zeros(32, 64)
        torch.testing.assert_close(model(images)[0], other(images)[0], rtol=1e-5, atol=1e-5)


def test_trainable_and_autocast_linears_are_not_packed():
    torch.manual_seed(0)
    layer = torch.nn.Linear(16, 8)
    x = torch.randn(4, 16)
    packs = FrozenLinearPacks()
    with packs.active():
        layer(x).sum().backward()  # trainable weight: needs its own gradient
        assert layer.weight.grad is not None and len(packs) == 0
        layer.requires_grad_(False)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            assert layer(x).dtype == torch.bfloat16 and len(packs) == 0
        assert layer(x).dtype == torch.float32 and len(packs) == 1
        layer.double()
        assert layer(x.double()).dtype == torch.float64 and len(packs) == 1


def test_full_finetuning_dtlvit_is_unaffected():
    images = torch.randn(2, 3, 32, 32)
    plain = build(TINY_VIT, freeze_backbone=False)
    packed = build(TINY_VIT, freeze_backbone=False, pack_frozen_weights=True)
    packed.load_state_dict(plain.state_dict())
    out = logits_and_grads(packed, images)
    assert len(packed.frozen_linear_packs) == 0
    assert 'layers.0.attn.qkv.weight' in out[1]
    assert_same(logits_and_grads(plain, images), out)


def test_packs_are_not_saved_copied_or_pickled():
    model = build(TINY_VIT, pack_frozen_weights=True).eval()
    keys = set(build(TINY_VIT).state_dict())
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert len(model.frozen_linear_packs) > 0
    assert set(model.state_dict()) == keys
    clone = copy.deepcopy(model)
    assert len(clone.frozen_linear_packs) == 0
    assert len(pickle.loads(pickle.dumps(model.frozen_linear_packs))) == 0
    with torch.no_grad():
        torch.testing.assert_close(clone(torch.ones(1, 3, 32, 32))[0],
                                   model(torch.ones(1, 3, 32, 32))[0])


def test_nested_use_stacks_one_mode():
    """The runner enters the packs around the forward and again around each
    block (checkpointing recomputes blocks outside forward); nested entries
    must not stack a second mode, which would dispatch every op twice in
    Python (the packed ViT-B step took 1.6x as long)."""
    from torch.overrides import _get_current_function_mode_stack

    from mmdtl.models.frozen_linear import _PackedLinearMode, packed_linears

    packs, x = FrozenLinearPacks(), torch.zeros(1)

    def modes():
        return sum(isinstance(m, _PackedLinearMode) for m in _get_current_function_mode_stack())

    with packed_linears(packs, x):
        assert packs.is_active() and modes() == 1
        with packed_linears(packs, x):
            assert modes() == 1
        with packed_linears(FrozenLinearPacks(), x):  # other packs do stack
            assert modes() == 2
    assert not packs.is_active() and modes() == 0
