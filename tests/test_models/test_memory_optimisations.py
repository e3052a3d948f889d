"""Memory optimisations leave outputs and gradients unchanged, and DTL saves
fewer activation bytes than LoRA and full fine-tuning on the same input."""
import copy

import pytest
import torch
from mmpretrain.registry import MODELS

import mmdtl  # noqa: F401
from mmdtl.utils import saved_activation_bytes

TINY = dict(embed_dims=32, num_layers=6, num_heads=2, feedforward_channels=64)


def build(kind, **kwargs):
    torch.manual_seed(0)
    vit = dict(arch=TINY, img_size=32, patch_size=8, drop_path_rate=0.1)
    if kind == 'full':
        return MODELS.build(dict(type='VisionTransformer', out_type='avg_featmap',
                                 final_norm=False, **vit))
    if kind == 'lora':
        return MODELS.build(dict(type='LoRAModel', rank=8, alpha=8, targets=[dict(type='qkv')],
                                 module=dict(type='VisionTransformer', out_type='avg_featmap',
                                             final_norm=False, **vit)))
    recompute = kwargs.pop('recompute', True)
    model = MODELS.build(dict(type='DTLViT', **vit, **kwargs, csn=dict(
        type='CompactSideNetwork', rank=2, start=3, dwconv_kernel=3 if kind == 'dtl+' else 0,
        recompute_side_output=recompute)))
    for up in model.csn.up_projs.values():
        torch.nn.init.normal_(up, std=0.3)
    return model


def loss_and_grads(model, images, seed=1):
    model.train()
    torch.manual_seed(seed)  # same drop-path draws for every variant
    out = model(images)[0]
    loss = (out ** 2).sum()
    model.zero_grad()
    loss.backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                          if p.requires_grad}


@pytest.mark.parametrize('variant', [
    dict(checkpoint_suffix=True), dict(recompute=False),
    dict(checkpoint_suffix=True, recompute=False)])
def test_optimisations_keep_outputs_and_gradients(variant):
    images = torch.randn(2, 3, 32, 32)
    base = build('dtl+')
    recompute = variant.pop('recompute', True)
    other = copy.deepcopy(base)
    other.csn.recompute_side_output = recompute
    for key, value in variant.items():
        setattr(other, key, value)
    # Switched on the built model, the option reaches the runner.
    assert other.dtl_options.checkpoint_suffix == variant.get('checkpoint_suffix', False)
    out_a, grads_a = loss_and_grads(base, images)
    out_b, grads_b = loss_and_grads(other, images)
    torch.testing.assert_close(out_a, out_b)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) == 13
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], msg=name)


def test_no_grad_prefix_keeps_gradients():
    """The frozen prefix under no_grad gives the CSN the same gradients as a
    run where autograd records the prefix too."""
    images = torch.randn(2, 3, 32, 32)
    model = build('dtl+')
    out_a, grads_a = loss_and_grads(model, images)
    recorded = copy.deepcopy(model)
    # grad mode on everywhere, no optimisation
    recorded.dtl_runner.frozen_prefix = lambda: False
    out_b, grads_b = loss_and_grads(recorded, images)
    torch.testing.assert_close(out_a, out_b)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], msg=name)


def test_dtl_saves_fewer_activation_bytes_than_lora_and_full():
    images = torch.randn(4, 3, 32, 32)

    def step_bytes(model):
        model.train()
        return saved_activation_bytes(model, lambda: model(images)[0].sum())

    full, lora = step_bytes(build('full')), step_bytes(build('lora'))
    dtl, dtl_plus = step_bytes(build('dtl')), step_bytes(build('dtl+'))
    dtl_ckpt = step_bytes(build('dtl+', checkpoint_suffix=True))
    assert dtl < lora < full and dtl_plus < lora
    assert dtl_ckpt < dtl_plus
    # Without the side-output recomputation DTL+ keeps more.
    assert step_bytes(build('dtl+', recompute=False)) > dtl_plus


def _saved_storages(model, images):
    """(dtype, nbytes) of every storage saved for backward by one bf16-autocast
    training forward, parameters excluded."""
    model.train()
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    saved = {}

    def pack(tensor):
        key = tensor.untyped_storage()._cdata
        if key not in params:
            saved[key] = (tensor.dtype, tensor.untyped_storage().nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
            torch.autocast('cpu', torch.bfloat16):
        loss = model(images)[0].float().sum()
    loss.backward()
    return list(saved.values())


def test_checkpointed_suffix_keeps_no_tap_copy_of_its_inputs():
    """Under autocast the CSN tap casts each block input to bf16; with the tap
    inside the suffix block's checkpoint, backward keeps per suffix block only
    its fp32 input and the bf16 running sum, and bf16 input copies only for
    the prefix taps (blocks 0..M)."""
    images = torch.randn(4, 3, 32, 32)
    model = build('dtl+', checkpoint_suffix=True)
    tokens = 4 * 17 * 32  # batch x (cls + 4x4 patches) x dims
    saved = _saved_storages(model, images)
    num_prefix, num_suffix = model.csn.start + 1, model.num_layers - model.csn.start - 1
    assert sum(1 for s in saved if s == (torch.float32, tokens * 4)) == num_suffix
    # Prefix tap copies + one running sum per suffix block (the tap copies of
    # the suffix blocks, 2 more, are gone).
    assert sum(1 for s in saved if s == (torch.bfloat16, tokens * 2)) == num_prefix + num_suffix
    plain = _saved_storages(build('dtl+'), images)
    assert sum(n for _, n in saved) < sum(n for _, n in plain)
