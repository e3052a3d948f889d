"""``recompute_prefix_taps``: the frozen prefix's tapped block inputs are not
kept for backward but recomputed there; logits and CSN gradients stay equal."""
import pytest
import torch
from mmpretrain.registry import MODELS

import mmdtl  # noqa: F401

TINY = dict(embed_dims=32, num_layers=6, num_heads=2, feedforward_channels=64)


def build(**kwargs):
    torch.manual_seed(0)
    cfg = dict(type='DTLViT', arch=TINY, img_size=32, patch_size=8, drop_path_rate=0.,
               csn=dict(type='CompactSideNetwork', rank=2, start=3, dwconv_kernel=3))
    cfg.update(kwargs)
    model = MODELS.build(cfg)
    for up in model.csn.up_projs.values():  # B = 0 would hide gradient errors of A
        torch.nn.init.normal_(up, std=0.3)
    return model.train()


def loss_and_grads(model, images, autocast):
    with torch.autocast('cpu', torch.bfloat16, enabled=autocast):
        out = model(images)[0].float()
    model.zero_grad()
    (out ** 2).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                          if p.requires_grad}


def saved_bytes(model, images, autocast):
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    saved = {}

    def pack(tensor):
        key = tensor.untyped_storage()._cdata
        if key not in params:
            saved[key] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast('cpu', torch.bfloat16, enabled=autocast):
        loss = model(images)[0].float().sum()
    loss.backward()
    return sum(saved.values())


# Half-stored weights are compared under autocast only (outside it they are
# an approximation by design).
@pytest.mark.parametrize('autocast,suffix', [
    (False, dict()), (True, dict()),
    (False, dict(checkpoint_suffix=True)), (True, dict(checkpoint_suffix=True)),
    (True, dict(frozen_weights_dtype='bfloat16')),
])
def test_same_logits_and_gradients(autocast, suffix):
    images = torch.randn(2, 3, 32, 32)
    base = build(**suffix)
    other = build(recompute_prefix_taps=True, **suffix)
    other.load_state_dict(base.state_dict())
    out_a, grads_a = loss_and_grads(base, images, autocast)
    out_b, grads_b = loss_and_grads(other, images, autocast)
    # Same ops on the same inputs: exact.
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=0)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) == 13
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=0, atol=0, msg=name)


def test_eval_and_no_grad_match():
    images = torch.randn(2, 3, 32, 32)
    base, other = build(), build(recompute_prefix_taps=True)
    with torch.no_grad():
        torch.testing.assert_close(base(images)[0], other(images)[0], rtol=0, atol=0)


@pytest.mark.parametrize('autocast', [False, True])
def test_saves_no_prefix_tap_inputs(autocast):
    """Backward keeps none of the M + 1 prefix taps' inputs (or their bf16
    copies under autocast) and their [B, N, rank] projections."""
    images = torch.randn(4, 3, 32, 32)
    tokens = 4 * 17 * 32  # batch x (cls + 4x4 patches) x dims
    for kwargs in (dict(), dict(checkpoint_suffix=True)):
        plain = saved_bytes(build(**kwargs), images, autocast)
        recomputed = saved_bytes(build(recompute_prefix_taps=True, **kwargs), images, autocast)
        elem = 2 if autocast else 4
        num_prefix = 4  # taps 0..M
        # Per prefix tap: its input and the [B, N, rank] down-projection;
        # the images (4 x 3 x 32 x 32 fp32) are kept instead.
        expected = num_prefix * (tokens + 4 * 17 * 2) * elem - 4 * 3 * 32 * 32 * 4
        if autocast:  # the bf16 copies of A_i are recomputed too
            expected += num_prefix * 2 * 32 * 2
        assert plain - recomputed == expected, kwargs


@pytest.mark.parametrize('kwargs, match', [
    (dict(prefix_cache=dict()), 'prefix_cache'),
    (dict(drop_path_rate=0.1), 'drop_path_rate=0'),
    (dict(drop_rate=0.1), 'drop_path_rate=0'),
    (dict(freeze_backbone=False), 'freeze_backbone=True'),
    (dict(out_indices=(2, 5)), r'out_indices \[2\]'),
])
def test_refuses_what_it_cannot_recompute(kwargs, match):
    with pytest.raises(ValueError, match=match) as err:
        build(recompute_prefix_taps=True, **kwargs)
    assert 'recompute_prefix_taps' in str(err.value)
