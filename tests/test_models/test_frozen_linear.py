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


class FixedTimer:
    """A timer of ``'auto'`` that runs what it is given once and reports a
    fixed cost per path: decides the outcome without a clock."""

    def __init__(self, packed, plain):
        self.cost = dict(packed=packed, plain=plain)
        self.calls = dict(packed=0, plain=0)

    def __call__(self, path, fn):
        fn()
        self.calls[path] += 1
        return self.cost[path]


def auto_log(tmp_path, name):
    from mmengine.logging import MMLogger
    log_file = tmp_path / f'{name}.log'
    MMLogger.get_instance(name, log_file=str(log_file))  # the current logger
    return log_file


@pytest.mark.parametrize('winner', ['packed', 'plain'])
def test_auto_keeps_the_faster_kernels_with_the_same_results(winner, tmp_path):
    images = torch.randn(2, 3, 32, 32)
    plain = build(TINY_VIT)
    auto = build(TINY_VIT, pack_frozen_weights='auto')
    auto.load_state_dict(plain.state_dict())
    packs = auto.frozen_linear_packs
    timer = packs.timer = FixedTimer(packed=1.0 if winner == 'packed' else 3.0, plain=2.0)
    log_file = auto_log(tmp_path, f'auto_{winner}')
    with torch.no_grad():  # no training step: nothing measured yet
        auto(images)
    assert packs.use_packed is None and packs.decision is None
    for seed in (1, 2, 3):  # the measured step, then the chosen kernels
        assert_same(logits_and_grads(plain, images, seed), logits_and_grads(auto, images, seed))
        assert packs.chosen == (winner == 'packed')
    assert packs.use_packed == (winner == 'packed')
    # Packed copies are held only when they are used.
    assert (len(packs) > 0) == (winner == 'packed')
    # 6 blocks x (qkv, proj, fc1, fc2), one shape each; blocks 4-5 (after
    # M=3) also need the input gradient: 24 + 8 GEMMs per step and path,
    # each shape timed once per path and kind.
    decision = packs.decision
    assert decision['calls'] == 24 and decision['shapes'] == 4
    assert decision['input'] == (2, 3, 32, 32)
    assert decision['plain_ms'] == pytest.approx(1e3 * 2.0 * 32)
    if winner == 'packed':  # timed dispatch "cost": 1 - 2 < 0, none added
        assert decision['packed_ms'] == pytest.approx(1e3 * 32)
    else:
        assert decision['packed_ms'] > 1e3 * 3.0 * 32
    assert timer.calls == dict(packed=4 + 4 + 1, plain=4 + 4 + 1)
    lines = [line for line in log_file.read_text().splitlines() if "='auto'" in line]
    assert len(lines) == 1, lines
    chosen = 'packed frozen linears chosen' if winner == 'packed' else \
        'default (plain) frozen linears chosen'
    assert f"DTLViT: pack_frozen_weights='auto': {chosen}" in lines[0]
    assert (f'packed {decision["packed_ms"]:.1f} ms vs plain {decision["plain_ms"]:.1f} ms '
            f'per step ({decision["packed_ms"] / decision["plain_ms"]:.2f}x; packing needs '
            f'<= 0.95x)') in lines[0]


@pytest.mark.parametrize('packed_cost,chosen', [(1.89, True), (1.91, False), (2.0, False)])
def test_auto_packs_only_for_a_real_gain(packed_cost, chosen):
    """The packed copies cost memory: a gain under ``min_gain`` (5 %) of the
    frozen linears' time keeps the default kernels."""
    model = build(TINY_VIT, pack_frozen_weights='auto')
    packs = model.frozen_linear_packs
    packs.timer = FixedTimer(packed=packed_cost, plain=2.0)
    logits_and_grads(model, torch.randn(2, 3, 32, 32))
    assert packs.chosen is chosen and packs.min_gain == 0.05
    assert (len(packs) > 0) is chosen


def test_auto_with_checkpointed_suffix_and_prefix_cache():
    images = torch.randn(2, 3, 32, 32)
    plain = build(TINY_VIT, drop_path_rate=0.0)
    auto = build(TINY_VIT, drop_path_rate=0.0, pack_frozen_weights='auto',
                 checkpoint_suffix=True, prefix_cache=dict(storage='memory'))
    auto.load_state_dict(plain.state_dict())
    auto.frozen_linear_packs.timer = FixedTimer(packed=1.0, plain=2.0)
    expected = logits_and_grads(plain, images)
    for _ in range(3):  # measured (fills the cache), then packed from the cache
        assert_same(expected, logits_and_grads(auto, images))
    assert auto.frozen_linear_packs.use_packed and auto.prefix_cache.hits == 4  # 2 x 2 images
    # The measured step ran the whole prefix, so its shapes were timed.
    assert auto.frozen_linear_packs.decision['calls'] == 24


def test_auto_measures_with_the_real_clock(tmp_path):
    """The default timer decides one way or the other, draws no random
    numbers (the drop path of the next steps is unchanged) and logs it."""
    images = torch.randn(2, 3, 32, 32)
    plain = build(TINY_VIT)
    auto = build(TINY_VIT, pack_frozen_weights='auto')
    auto.load_state_dict(plain.state_dict())
    log_file = auto_log(tmp_path, 'auto_clock')
    for seed in (1, 2):
        expected = logits_and_grads(plain, images, seed)
        state = torch.random.get_rng_state()
        assert_same(expected, logits_and_grads(auto, images, seed))
        assert torch.equal(torch.random.get_rng_state(), state)
    packs = auto.frozen_linear_packs
    assert packs.use_packed in (True, False) and packs.use_packed == packs.chosen
    assert packs.decision['packed_ms'] > 0 and packs.decision['plain_ms'] > 0
    assert "pack_frozen_weights='auto'" in log_file.read_text()


def test_auto_without_eligible_linears_keeps_the_default_kernels(tmp_path):
    images = torch.randn(2, 3, 32, 32)
    log_file = auto_log(tmp_path, 'auto_none')
    # Full fine-tuning: every linear is trainable.
    full = build(TINY_VIT, freeze_backbone=False, pack_frozen_weights='auto')
    logits_and_grads(full, images)
    assert full.frozen_linear_packs.chosen is False
    # Under CPU autocast no call is exactly equivalent.
    amp = build(TINY_VIT, pack_frozen_weights='auto')
    with torch.autocast('cpu', dtype=torch.bfloat16):
        amp(images)[-1].float().sum().backward()
    assert amp.frozen_linear_packs.chosen is False and len(amp.frozen_linear_packs) == 0
    assert log_file.read_text().count('no frozen fp32 linear ran on CPU') == 2


def test_auto_option_values_and_copies():
    with pytest.raises(ValueError, match=r"DTLViT: pack_frozen_weights='yes' is not one of "
                                         r"False, True, 'auto'"):
        build(TINY_VIT, pack_frozen_weights='yes')
    with pytest.raises(ValueError, match="dtype='bfloat16' and pack_frozen_weights='auto'"):
        build(TINY_VIT, frozen_weights_dtype='bfloat16', pack_frozen_weights='auto')
    assert build(TINY_VIT, pack_frozen_weights=False).frozen_linear_packs is None
    model = build(TINY_VIT, pack_frozen_weights='auto')
    model.frozen_linear_packs.timer = FixedTimer(packed=1.0, plain=2.0)
    logits_and_grads(model, torch.randn(2, 3, 32, 32))
    assert model.frozen_linear_packs.chosen
    # A copy measures again: it may run on another machine.
    for copied in (copy.deepcopy(model.frozen_linear_packs),
                   pickle.loads(pickle.dumps(model.frozen_linear_packs))):
        assert copied.auto and copied.use_packed is None and copied.chosen is None
        assert len(copied) == 0
