"""Every trunk through the one runner: the matrix {trunk} x {prefix mode} x
{suffix mode} x {weight storage} against the paper's equations hooked onto
the parent's own forward (:func:`mmdtl.testing.reference_dtl_forward`), and
the same parity, option and multi-task checks for each trunk."""
import functools

import pytest
import torch
from mmpretrain.registry import MODELS

import mmdtl  # noqa: F401
from mmdtl.engine import save_task_checkpoint
from mmdtl.models import MultiTaskDTL
from mmdtl.models.dtl import INCOMPATIBLE
from mmdtl.models.frozen_dtype import HalfStoredMixin
from mmdtl.testing import reference_dtl_forward
from mmdtl.utils.memory import saved_activation_bytes

VIT_ARCH = dict(embed_dims=16, num_layers=4, num_heads=2, feedforward_channels=32)
# name: (DTL type, parent type, config shared by both, csn, image size)
TRUNKS = {
    'vit': ('DTLViT', 'VisionTransformer',
            dict(arch=VIT_ARCH, img_size=16, patch_size=4, out_type='avg_featmap',
                 final_norm=False),
            dict(rank=2, start=1, dwconv_kernel=3), 16),
    'swin': ('DTLSwin', 'SwinTransformer',
             dict(arch=dict(embed_dims=16, depths=[2, 2], num_heads=[1, 2]), img_size=32,
                  window_size=4, out_indices=(1, ), drop_path_rate=0.),
             # M in the second stage: the prefix spans a patch merging.
             dict(rank=2, start=2, dwconv_kernel=3), 32),
    'deit3': ('DTLDeiT3', 'DeiT3', dict(arch=VIT_ARCH, img_size=16, patch_size=4),
              dict(rank=2, start=1, dwconv_kernel=3), 16),
    'beit': ('DTLBEiT', 'BEiTViT',
             dict(arch=VIT_ARCH, img_size=16, patch_size=4, use_abs_pos_emb=True),
             dict(rank=2, start=2, dwconv_kernel=3), 16),
    'eva02': ('DTLViTEVA02', 'ViTEVA02',
              dict(arch=VIT_ARCH, img_size=16, patch_size=4, out_type='avg_featmap',
                   final_norm=False),
              dict(rank=2, start=2, dwconv_kernel=3), 16),
    'convnext': ('DTLConvNeXt', 'ConvNeXt',
                 dict(arch=dict(depths=[1, 1, 2, 2], channels=[8, 8, 16, 16]),
                      out_indices=(3, ), drop_path_rate=0.),
                 # M in stage 2 (blocks 2-3), stage 3 adds back with its own DWConv.
                 dict(rank=2, start=2, dwconv_kernel=3), 32),
}
PREFIX_MODES = {'plain': {}, 'cached': dict(prefix_cache=dict(storage='memory')),
                'recomputed': dict(recompute_prefix_taps=True)}
SUFFIX_MODES = {'plain': {}, 'checkpointed': dict(checkpoint_suffix=True)}
# A sparse side network per trunk: a subset of blocks taps, another adds back
# (Swin and ConvNeXt: blocks of two stages).
SPARSE = {
    'vit': dict(taps=[0, 2], add_back_blocks=[1, 3]),
    'swin': dict(taps=[2], add_back_blocks=[3]),
    'deit3': dict(taps=[0, 2], add_back_blocks=[1, 3]),
    'beit': dict(taps=[1, 3], add_back_blocks=[1, 3]),
    'eva02': dict(taps=[0, 2], add_back_blocks=[1, 3]),
    'convnext': dict(taps=[2, 4], add_back_blocks=[3, 5]),
}


def randomise(model):
    """Non-zero B and random trunk-side tables, so every term shows."""
    for name, param in model.named_parameters():
        if name.startswith('csn.up_projs') or name.endswith(('pos_embed', 'cls_token',
                                                            'bias_table')):
            torch.nn.init.normal_(param, std=0.3)


def build(trunk, sparse=False, **options):
    dtl_type, _, cfg, csn, _ = TRUNKS[trunk]
    if sparse:
        csn = {**{k: v for k, v in csn.items() if k != 'start'}, **SPARSE[trunk]}
    torch.manual_seed(0)
    model = MODELS.build(dict(type=dtl_type, **{**cfg, **options},
                              csn=dict(type='CompactSideNetwork', **csn)))
    randomise(model)
    return model


def parent_of(trunk, dtl):
    _, parent_type, cfg, _, _ = TRUNKS[trunk]
    parent = MODELS.build(dict(type=parent_type, **cfg))
    missing, unexpected = parent.load_state_dict(
        {k: v for k, v in dtl.state_dict().items() if not k.startswith('csn.')}, strict=False)
    assert not unexpected and not [k for k in missing if 'relative_position_index' not in k]
    parent.requires_grad_(False)
    return parent


def images_of(trunk, batch=2):
    size = TRUNKS[trunk][4]
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def step(model, images, autocast=False):
    """Outputs and CSN gradients of one backward pass (bf16 autocast if set)."""
    with torch.autocast('cpu', torch.bfloat16, enabled=autocast):
        outs = model(images)
    model.csn.zero_grad()
    sum(out.float().square().sum() for out in outs).backward()
    return ([out.detach().float() for out in outs],
            {n: p.grad.clone() for n, p in model.csn.named_parameters()})


@functools.lru_cache(maxsize=None)
def plain_result(trunk, autocast):
    return step(build(trunk).train(), images_of(trunk), autocast)


@functools.lru_cache(maxsize=None)
def reference_result(trunk, sparse=False):
    """Outputs and CSN gradients of the paper's equations on the parent (fp32)."""
    dtl = build(trunk, sparse).train()
    parent = parent_of(trunk, dtl)
    parent.train()
    outs = reference_dtl_forward(parent, dtl.csn, type(dtl).trunk_adapter(parent).blocks(),
                                 images_of(trunk), dtl.dtl_trunk.num_extra_tokens)
    dtl.csn.zero_grad()
    sum(out.square().sum() for out in outs).backward()
    return ([out.detach() for out in outs],
            {n: p.grad.clone() for n, p in dtl.csn.named_parameters()})


@pytest.mark.parametrize('trunk', list(TRUNKS))
def test_fresh_csn_is_the_parent(trunk):
    dtl = build(trunk)
    for up in dtl.csn.up_projs.values():
        torch.nn.init.zeros_(up)
    parent = parent_of(trunk, dtl)
    images = images_of(trunk)
    with torch.no_grad():
        parent.eval()  # mmpretrain's train() returns None
        expected, got = parent(images), dtl.eval()(images)
    assert len(expected) == len(got) == 1
    assert torch.equal(expected[0], got[0])


@pytest.mark.parametrize('trunk', list(TRUNKS))
def test_plain_runner_is_the_paper_on_the_parent(trunk):
    outs, grads = plain_result(trunk, False)
    expected_outs, expected_grads = reference_result(trunk)
    for out, expected in zip(outs, expected_outs):
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for name, grad in grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize('storage', ['fp32', 'bf16'])
@pytest.mark.parametrize('suffix', list(SUFFIX_MODES))
@pytest.mark.parametrize('prefix', list(PREFIX_MODES))
@pytest.mark.parametrize('trunk', list(TRUNKS))
def test_every_mode_is_bit_identical_to_the_plain_runner(trunk, prefix, suffix, storage):
    """Logits and CSN gradients of every prefix x suffix x storage mode equal
    the plain runner's exactly, fp32 and bf16 autocast (where half-stored
    weights are exact by construction), and the paper's equations on the
    parent (fp32, within float rounding)."""
    half = storage == 'bf16'
    options = {**PREFIX_MODES[prefix], **SUFFIX_MODES[suffix]}
    if half:
        options['frozen_weights_dtype'] = 'bfloat16'
    model = build(trunk, **options).train()
    if half:  # the same fp32 weights, rounded once
        model.load_state_dict(build(trunk).state_dict())
    images = images_of(trunk)
    for autocast in ([True] if half else [False, True]):
        expected_outs, expected_grads = plain_result(trunk, autocast)
        runs = 2 if prefix == 'cached' else 1  # the second pass reads the cache
        for _ in range(runs):
            outs, grads = step(model, images, autocast)
        for out, expected in zip(outs, expected_outs):
            torch.testing.assert_close(out, expected, rtol=0, atol=0)
        assert grads.keys() == expected_grads.keys()
        for name in grads:
            torch.testing.assert_close(grads[name], expected_grads[name], rtol=0, atol=0,
                                       msg=name)
        if not autocast:  # and the paper's equations on the parent, directly
            reference_outs, reference_grads = reference_result(trunk)
            for out, expected in zip(outs, reference_outs):
                torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
            for name in grads:
                torch.testing.assert_close(grads[name], reference_grads[name], rtol=1e-4,
                                           atol=1e-6, msg=name)
    if prefix == 'cached':
        assert model.prefix_cache.hits > 0


@pytest.mark.parametrize('mode', ['plain', 'recomputed', 'checkpointed'])
@pytest.mark.parametrize('trunk', list(TRUNKS))
def test_sparse_side_network_is_the_paper_on_the_parent(trunk, mode):
    """Taps and add-backs at a subset of blocks: every prefix/suffix mode
    computes the equations on the parent, with only those taps and
    add-backs, and differs from the dense side network."""
    options = {'plain': {}, 'recomputed': PREFIX_MODES['recomputed'],
               'checkpointed': SUFFIX_MODES['checkpointed']}[mode]
    model = build(trunk, sparse=True, **options).train()
    assert model.csn.adds_back == SPARSE[trunk]['add_back_blocks']
    assert model.csn.start == SPARSE[trunk]['add_back_blocks'][0]
    outs, grads = step(model, images_of(trunk))
    expected_outs, expected_grads = reference_result(trunk, sparse=True)
    assert sorted(grads) == sorted(expected_grads)
    for out, expected, dense in zip(outs, expected_outs, plain_result(trunk, False)[0]):
        torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(out, dense)
    for name, grad in grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize('trunk', list(TRUNKS))
def test_half_stored_fp32_eval_is_the_rounded_weight_model(trunk):
    """Outside autocast, half-stored weights compute the fp32 model whose
    stored layers' weights are rounded to bf16 (BEiT keeps ``qkv`` fp32: its
    attention reads the weight directly)."""
    half = build(trunk, frozen_weights_dtype='bfloat16')
    rounded = build(trunk)
    half.load_state_dict(rounded.state_dict())
    stored = {name for name, m in half.named_modules() if isinstance(m, HalfStoredMixin)}
    assert stored
    for name, module in rounded.named_modules():
        if name in stored:
            for param in module.parameters(recurse=False):
                param.data = param.data.to(torch.bfloat16).float()
    images = images_of(trunk)
    with torch.no_grad():
        for out, expected in zip(half.eval()(images), rounded.eval()(images)):
            torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('trunk', list(TRUNKS))
def test_bytes_kept_for_backward(trunk):
    """DTL keeps fewer bytes for backward than full fine-tuning of the same
    trunk; recomputed prefix taps keep the images instead of every prefix
    tap's input and its (B, N, rank) projection: exactly that difference."""
    images = images_of(trunk, batch=4)

    def saved_bytes(model):
        return saved_activation_bytes(model, lambda: sum(out.sum() for out in model(images)))

    full = saved_bytes(build(trunk, freeze_backbone=False).train())
    model = build(trunk).train()
    dtl = saved_bytes(model)
    recomputed = saved_bytes(build(trunk, recompute_prefix_taps=True).train())
    assert dtl < full
    with torch.no_grad():
        tap_inputs, _, grid = model.dtl_runner.prefix_features(images)
    assert tap_inputs  # the prefix has taps
    tap_bytes = sum(x.nbytes + model.dtl_trunk.tokens(x, grid)[..., :model.csn.rank].nbytes
                    for x in tap_inputs.values())
    assert dtl - recomputed == tap_bytes - images.nbytes


@pytest.mark.parametrize('trunk', list(TRUNKS))
def test_prefix_inputs_are_freed_once_tapped_under_autocast(trunk):
    """Under autocast a tap keeps only its half copy for backward, so an fp32
    prefix block input must be gone once the next block runs. Keeping them
    all until the prefix ends (tapping afterwards) raised DINOv2-g's
    ``dtl+ckpt_half`` estimate at M = 34 from 3.84 to 4.07 GB; keeping them
    through the suffix raised ViT-S's DTL+ step peak by 3 % at batch 4.
    Inputs that are bf16 already (Swin after patch merging) are what the tap
    saves."""
    import weakref
    model = build(trunk).train()
    blocks = model.dtl_trunk.blocks()
    start = model.csn.start
    inputs, alive = [], []

    def check(index):
        def hook(module, args):
            alive.append([i for i, (ref, dtype) in enumerate(inputs)
                          if ref() is not None and dtype == torch.float32])
            if index <= start:
                inputs.append((weakref.ref(args[0]), args[0].dtype))
        return hook

    handles = [block.register_forward_pre_hook(check(i))
               for i, block in enumerate(blocks[:start + 2])]
    with torch.autocast('cpu', torch.bfloat16):
        outs = model(images_of(trunk))
    for handle in handles:
        handle.remove()
    assert len(inputs) == start + 1 and alive == [[]] * (start + 2)
    sum(out.float().sum() for out in outs).backward()


@pytest.mark.parametrize('rule', INCOMPATIBLE, ids=lambda r: f'{r[0]}+{r[2]}')
@pytest.mark.parametrize('trunk', list(TRUNKS))
def test_incompatible_options_are_refused_in_one_line(trunk, rule):
    values = dict(recompute_prefix_taps=True, prefix_cache=dict(storage='memory'),
                  freeze_backbone=False, frozen_weights_dtype='bfloat16',
                  pack_frozen_weights=True)
    first, _, second, _, _ = rule
    with pytest.raises(ValueError) as err:
        build(trunk, **{first: values[first], second: values[second]})
    message = str(err.value)
    assert '\n' not in message and f'{first}=' in message and f'{second}=' in message


@pytest.mark.parametrize('trunk', list(TRUNKS))
def test_stochastic_prefix_is_refused_for_stored_or_recomputed_prefixes(trunk):
    for option in (dict(prefix_cache=dict(storage='memory')), dict(recompute_prefix_taps=True)):
        with pytest.raises(ValueError, match='needs a deterministic prefix'):
            build(trunk, drop_path_rate=0.2, **option)


HEADS = {'swin': dict(neck=dict(type='GlobalAveragePooling'))}


@pytest.mark.parametrize('trunk', list(TRUNKS))
def test_multitask_equals_each_task_model(trunk, tmp_path):
    dtl_type, _, cfg, csn, _ = TRUNKS[trunk]
    trunk_model = build(trunk)
    backbone_file = str(tmp_path / 'backbone.pth')
    torch.save(dict(state_dict={k: v for k, v in trunk_model.state_dict().items()
                                if not k.startswith('csn.')}), backbone_file)
    dims = trunk_model.dtl_trunk.block_dims()[-1]
    models, files = {}, {}
    num_layers = len(trunk_model.dtl_trunk.blocks())
    sparse = {**{k: v for k, v in csn.items() if k != 'start'}, **SPARSE[trunk]}
    for name, task_csn in (('early', csn), ('late', {**csn, 'start': num_layers - 1}),
                           ('sparse', sparse)):
        model = MODELS.build(dict(
            type='ImageClassifier', **HEADS.get(trunk, {}),
            backbone=dict(type=dtl_type, **cfg, csn=dict(type='CompactSideNetwork', **task_csn)),
            head=dict(type='LinearClsHead', num_classes=3, in_channels=dims)))
        model.backbone.load_state_dict(trunk_model.state_dict(), strict=False)
        for up in model.backbone.csn.up_projs.values():
            torch.nn.init.normal_(up, std=0.3)
        models[name] = model.eval()
        files[name] = str(tmp_path / f'{name}.pth')
        save_task_checkpoint(model, files[name], backbone_checkpoint=backbone_file)
    multi = MultiTaskDTL(dict(type=dtl_type, **cfg), files, backbone_checkpoint=backbone_file)
    images = images_of(trunk, batch=3)
    with torch.no_grad():
        outputs = multi(images)
        for name, model in models.items():
            torch.testing.assert_close(outputs[name], model(images, mode='tensor'),
                                       rtol=1e-5, atol=1e-5)


def test_output_at_block_m_works_with_a_cached_or_recomputed_prefix():
    """Block M's output is taken after its add-back, so out_indices may name
    M itself; only earlier ones lie in the prefix."""
    images = images_of('vit')
    start = TRUNKS['vit'][3]['start']
    expected = build('vit', out_indices=(start, 3)).train()
    expected_outs = [out.detach() for out in expected(images)]
    for option in (dict(prefix_cache=dict(storage='memory')), dict(recompute_prefix_taps=True)):
        model = build('vit', out_indices=(start, 3), **option).train()
        for _ in range(2):
            outs = model(images)
        for out, ref in zip(outs, expected_outs):
            torch.testing.assert_close(out.detach(), ref, rtol=0, atol=0)
        with pytest.raises(ValueError, match=rf'out_indices \[{start - 1}\] lie in the'):
            build('vit', out_indices=(start - 1, 3), **option)
