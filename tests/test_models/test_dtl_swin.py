"""DTLSwin + the Swin converter: equations, stages, memory, freezing, counts,
checkpoints and errors. Tiny archs only; Swin-B is built, never run."""
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmpretrain.models import SwinTransformer
from mmpretrain.registry import MODELS

import mmdtl  # noqa: F401
from mmdtl.converters import swin as converter

REPO = Path(__file__).resolve().parents[2]
TINY = dict(embed_dims=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4])
DIMS = [16, 32, 64, 128]
SWIN = dict(arch=TINY, img_size=64, window_size=4, pad_small_map=True)


def tiny_swin(start=3, taps=None, kernel=3, rank=2, **kwargs):
    torch.manual_seed(0)
    model = MODELS.build(dict(
        type='DTLSwin', **{**SWIN, **kwargs},
        csn=dict(type='CompactSideNetwork', rank=rank, taps=taps, start=start,
                 beta=100., dwconv_kernel=kernel)))
    # Random relative position tables (init_weights would, with much logging).
    for name, param in model.named_parameters():
        if name.endswith('relative_position_bias_table'):
            torch.nn.init.trunc_normal_(param, std=0.02)
    # Non-zero B so the side network changes the output (B starts at zero).
    for up in model.csn.up_projs.values():
        torch.nn.init.normal_(up, std=0.5)
    return model


def reference_forward(model, images):
    """DTL on Swin written out directly: the parent's blocks run one by one,
    a per-stage running sum of low-rank projections of block inputs, swish
    and the stage's depthwise conv added to block outputs."""
    csn = model.csn
    x, hw = model.patch_embed(images)
    outs, index = [], 0
    for s, stage in enumerate(model.stages):
        running_sum = torch.zeros_like(x)  # restarts at every stage
        for block in stage.blocks:
            if index in csn.taps:
                a, b = csn.down_projs[str(index)], csn.up_projs[str(index)]
                running_sum = running_sum + x @ a.T @ b.T
            x = block(x, hw)
            if index >= csn.start:
                side = running_sum * torch.sigmoid(100. * running_sum)
                if csn.dwconv_kernel:
                    grid = side.transpose(1, 2).reshape(len(images), -1, *hw)
                    grid = F.conv2d(grid, csn.dwconvs[str(s)].weight,
                                    padding=csn.dwconv_kernel // 2, groups=grid.shape[1])
                    side = grid.flatten(2).transpose(1, 2)
                x = x + side
            index += 1
        if s in model.out_indices:
            out = getattr(model, f'norm{s}')(x)
            outs.append(out.view(len(images), *hw, -1).permute(0, 3, 1, 2))
        if stage.downsample is not None:
            x, hw = stage.downsample(x, hw)
    return outs


def grids(height, width):
    """Token grid of every stage: patch 4 (padded), then 2x2 merging (padded)."""
    h, w = math.ceil(height / 4), math.ceil(width / 4)
    out = []
    for _ in range(4):
        out.append((h, w))
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return out


@pytest.mark.parametrize('kernel', [0, 3])
@pytest.mark.parametrize('start,taps', [(3, None), (4, [4, 6]), (0, [0, 2, 4, 6])])
def test_equations_match_direct_computation(kernel, start, taps):
    model = tiny_swin(start=start, taps=taps, kernel=kernel, out_indices=(0, 1, 2, 3)).eval()
    for size in [(64, 64), (72, 56)]:  # 72x56: non-square, grids not multiples of 4
        images = torch.randn(2, 3, *size)
        with torch.no_grad():
            outs = model(images)
            expected = reference_forward(model, images)
        assert len(outs) == 4
        for out, ref, dims, grid in zip(outs, expected, DIMS, grids(*size)):
            assert out.shape == (2, dims, *grid)
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # The side network does change the output of stages that add back.
    plain = SwinTransformer(**SWIN, out_indices=(0, 1, 2, 3))
    plain.eval()  # SwinTransformer.train() returns None: no chaining
    plain.load_state_dict({k: v for k, v in model.state_dict().items()
                           if not k.startswith('csn.')})
    with torch.no_grad():
        assert not torch.allclose(plain(images)[3], outs[3])


@pytest.mark.parametrize('out_after_downsample', [False, True])
@pytest.mark.parametrize('size', [(64, 64), (66, 50)])
def test_zero_init_is_identity_to_parent(out_after_downsample, size):
    """B = 0: the output is the parent's, for any input size and out mode."""
    kwargs = dict(out_indices=(0, 1, 2, 3), out_after_downsample=out_after_downsample)
    torch.manual_seed(0)
    model = MODELS.build(dict(type='DTLSwin', **SWIN, **kwargs, csn=dict(
        type='CompactSideNetwork', rank=2, start=2, dwconv_kernel=3))).eval()
    plain = SwinTransformer(**SWIN, **kwargs)
    plain.eval()
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(k.startswith('csn.') for k in unexpected)
    images = torch.randn(2, 3, *size)
    with torch.no_grad():
        outs, expected = model(images), plain(images)
    dims = DIMS[1:] + DIMS[-1:] if out_after_downsample else DIMS
    grid = grids(*size)
    grid = grid[1:] + grid[-1:] if out_after_downsample else grid
    for out, ref, d, g in zip(outs, expected, dims, grid):
        assert out.shape == (2, d, *g)
        assert torch.equal(out, ref)


def test_classifier_with_gap_neck():
    model = MODELS.build(dict(
        type='ImageClassifier',
        backbone=dict(type='DTLSwin', **SWIN,
                      csn=dict(type='CompactSideNetwork', rank=2, start=4, dwconv_kernel=3)),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=5, in_channels=128)))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(('backbone.csn.', 'head.')) for n in trainable)
    assert model(torch.randn(2, 3, 64, 64), mode='tensor').shape == (2, 5)


def test_only_csn_trains_and_backbone_bit_identical():
    # Taps from stage 1 on: the sum of stage 0 would restart unused.
    model = tiny_swin(start=3, taps=list(range(2, 8)), drop_path_rate=0.1)
    model.train()
    assert all(m.training for m in model.modules())  # drop path stays active
    head = torch.nn.Linear(128, 3)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith('csn.') for n in trainable)
    frozen_before = {k: v.clone() for k, v in model.state_dict().items()
                     if not k.startswith('csn.')}
    csn_before = {k: v.clone() for k, v in model.csn.state_dict().items()}
    # Every parameter goes to AdamW, as mmengine's constructor does.
    optimizer = torch.optim.AdamW(
        list(model.parameters()) + list(head.parameters()), lr=1e-2, weight_decay=0.05)
    for _ in range(3):
        feats = model(torch.randn(4, 3, 64, 64))[0].mean(dim=(2, 3))
        loss = F.cross_entropy(head(feats), torch.tensor([0, 1, 2, 0]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for key, value in model.state_dict().items():
        if key.startswith('csn.'):
            assert not torch.equal(value, csn_before[key.split('.', 1)[1]]), key
        else:
            assert torch.equal(value, frozen_before[key]), key


class SavedTensorLog:
    """Records the storages autograd saves for backward, grouped by where they
    were saved: a trunk module (patch embed, block i, merging after stage s)
    or 'outside' (CSN taps and add-backs, output norms)."""

    def __init__(self, model):
        self.where = 'outside'
        self.saved = {}
        modules = {'patch_embed': model.patch_embed}
        index = 0
        for s, stage in enumerate(model.stages):
            for block in stage.blocks:
                modules[index] = block
                index += 1
            if stage.downsample is not None:
                modules[f'merge{s}'] = stage.downsample
        for name, module in modules.items():
            module.register_forward_pre_hook(lambda m, a, n=name: setattr(self, 'where', n))
            module.register_forward_hook(lambda m, a, o: setattr(self, 'where', 'outside'))
        # Remember the storage of every tap input.
        self.tap_inputs = {}
        tap = model.csn.tap

        def logged_tap(index, tokens, running_sum):
            if str(index) in model.csn.down_projs:
                storage = tokens.untyped_storage()
                self.tap_inputs[storage.data_ptr()] = storage.nbytes()
            return tap(index, tokens, running_sum)

        model.csn.tap = logged_tap

    def pack(self, tensor):
        storage = tensor.untyped_storage()
        self.saved.setdefault(self.where, {})[storage.data_ptr()] = (
            storage.nbytes(), tensor.shape)
        return tensor

    def bytes(self, where):
        return sum(n for n, _ in self.saved.get(where, {}).values())


def saved_log(model, images):
    log = SavedTensorLog(model)
    with torch.autograd.graph.saved_tensors_hooks(log.pack, lambda t: t):
        model(images)[0].sum().backward()
    return log


def test_frozen_prefix_saves_nothing_beyond_tap_inputs():
    images = torch.randn(2, 3, 64, 64)
    start = 5  # last block of stage 2: stages 0 and 1 and blocks 4, 5 are prefix
    model = tiny_swin(start=start).train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    log = saved_log(model, images)
    prefix = ['patch_embed', 0, 1, 'merge0', 2, 3, 'merge1', 4, 5]
    for where in prefix:
        assert log.bytes(where) == 0, f'{where} saved tensors for backward'
    assert all(log.bytes(where) > 0 for where in (6, 7, 'merge2'))
    # Outside the trunk: every tap input, plus only small tensors: rank-2
    # projections (B, N, 2) and add-back / norm activations of stages 2-3.
    outside = log.saved['outside']
    assert set(log.tap_inputs) <= set(outside)
    largest_adapted = 2 * 16 * 64  # a (B, N, C) tensor of stage 2
    for ptr, (nbytes, shape) in outside.items():
        if ptr in log.tap_inputs or ptr in params:
            continue
        assert shape[-1] == 2 or nbytes <= 4 * largest_adapted, (
            f'{tuple(shape)} saved outside the blocks')
    # The same model fully fine-tuned saves activations everywhere: the
    # checks above can fail.
    full = tiny_swin(start=start, freeze_backbone=False).train()
    full_log = saved_log(full, images)
    assert all(full_log.bytes(where) > 0 for where in prefix)
    total = sum(log.bytes(w) for w in log.saved)
    full_total = sum(full_log.bytes(w) for w in full_log.saved)
    assert total < 0.5 * full_total


def test_checkpoint_suffix_keeps_outputs_and_saves_less():
    """Checkpointed suffix blocks: the same logits and side-network gradients
    (drop path included: its draws are replayed), and the suffix blocks keep
    nothing for backward."""
    images = torch.randn(2, 3, 64, 64)
    start = 3  # blocks 4-7 (stages 2 and 3) are the suffix

    def logits_and_grads(model):
        torch.manual_seed(1)
        out = model(images)[0]
        model.zero_grad()
        (out ** 2).sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                              if p.requires_grad}

    plain = tiny_swin(start=start, drop_path_rate=0.2).train()
    ckpt = tiny_swin(start=start, drop_path_rate=0.2, checkpoint_suffix=True).train()
    ckpt.load_state_dict(plain.state_dict())
    out_a, grads_a = logits_and_grads(plain)
    out_b, grads_b = logits_and_grads(ckpt)
    torch.testing.assert_close(out_a, out_b)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 8
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], msg=name)
    plain_log, ckpt_log = saved_log(plain, images), saved_log(ckpt, images)
    assert all(plain_log.bytes(i) > 0 for i in range(4, 8))
    assert all(ckpt_log.bytes(i) == 0 for i in range(4, 8))


@pytest.mark.parametrize('name,kernel,lr,drop_path,count', [
    ('swin-b_vtab-cifar_dtl.py', 0, 1e-3, 0.1, 90_112),
    ('swin-b_vtab-cifar.py', 5, 3e-3, 0., 128_512),
])
def test_swin_b_recipe_configs_and_param_counts(name, kernel, lr, drop_path, count):
    cfg = Config.fromfile(str(REPO / 'configs' / 'dtl' / name))
    backbone = cfg.model.backbone
    assert backbone.arch == 'base' and backbone.drop_path_rate == drop_path
    assert backbone.csn.rank == 4 and backbone.csn.taps == list(range(4, 24))
    assert backbone.csn.start == 14 and backbone.csn.beta == 100.
    assert backbone.csn.dwconv_kernel == kernel
    assert cfg.optim_wrapper.optimizer.lr == lr
    assert cfg.optim_wrapper.optimizer.weight_decay == 0.05
    assert cfg.train_cfg.max_epochs == 110 and cfg.global_batch_size == 32
    assert cfg.train_dataloader.batch_size == 32
    assert cfg.model.neck.type == 'GlobalAveragePooling'
    assert cfg.model.head.in_channels == 1024 and cfg.model.head.num_classes == 100
    backbone = {**backbone, 'init_cfg': None}
    model = MODELS.build(backbone)  # build only: a Swin-B forward is too slow here
    assert sum(p.numel() for p in model.csn.parameters()) == count
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == count
    # DTL+: one 5x5 DWConv for each stage that adds back (2: 512, 3: 1024 dims).
    assert sorted(model.csn.dwconvs) == ([] if kernel == 0 else ['2', '3'])


@pytest.mark.parametrize('csn,match', [
    (dict(start=8), r'csn.start .* \[0, 7\]'),
    (dict(taps=[0, 8]), r'csn.taps .* \[0, 7\].*\[8\]'),
    (dict(dwconv_kernel=-1), r'csn.dwconv_kernel must be 0'),
    (dict(rank=0), r'csn.rank'),
    # Block 2 starts stage 1, whose running sum restarts: tap 0 cannot feed it.
    (dict(taps=[0], start=2),
     r'csn.taps \[0\] feed the running sum after the last block of their stage that adds'),
    (dict(taps=[3], start=2), r'block 2 adds back'),
    (dict(num_layers=12), r'csn.num_layers=12 does not match .* num_layers=8'),
    (dict(embed_dims=16), r'csn.embed_dims=16 does not match'),
])
def test_bad_csn_options(csn, match):
    with pytest.raises(ValueError, match=match):
        MODELS.build(dict(type='DTLSwin', **SWIN, csn=dict(type='CompactSideNetwork', **csn)))


def test_csn_slot_must_be_a_typed_dict_or_module():
    with pytest.raises(TypeError, match='csn must be a dict'):
        MODELS.build(dict(type='DTLSwin', **SWIN, csn=dict(rank=2)))
    # A prebuilt side network for another backbone is refused.
    other = MODELS.build(dict(type='CompactSideNetwork', embed_dims=16, num_layers=8))
    with pytest.raises(ValueError, match=r'csn was built for 8 blocks of dims \[16, 16'):
        MODELS.build(dict(type='DTLSwin', **SWIN, csn=other))


def test_old_format_checkpoint_loads(tmp_path):
    """mmcls v1 names the final norm ``norm`` and stores attn_mask buffers;
    the parent renames them only for itself, DTLSwin must do it too."""
    model = tiny_swin(start=3)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state['norm.weight'] = torch.randn(128)
    state['norm.bias'] = state.pop('norm3.bias')
    del state['norm3.weight']
    state['stages.0.blocks.1.attn.attn_mask'] = torch.zeros(1)
    model.load_state_dict(dict(state), strict=True)  # plain dict: no version metadata
    assert torch.equal(model.norm3.weight, state['norm.weight'])
    # Through init_cfg, and inside a classifier (prefix "backbone.").
    ckpt = tmp_path / 'old.pth'
    torch.save({'state_dict': state}, ckpt)
    other = MODELS.build(dict(type='DTLSwin', **SWIN, csn=dict(type='CompactSideNetwork'),
                              init_cfg=dict(type='Pretrained', checkpoint=str(ckpt))))
    other.init_weights()
    assert torch.equal(other.norm3.weight, state['norm.weight'])
    classifier = MODELS.build(dict(
        type='ImageClassifier',
        backbone=dict(type='DTLSwin', **SWIN, csn=dict(
            type='CompactSideNetwork', rank=2, start=3, dwconv_kernel=3)),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=5, in_channels=128)))
    missing, unexpected = classifier.load_state_dict(
        {'backbone.' + k: v for k, v in state.items()}, strict=False)
    assert not unexpected and all(k.startswith('head.') for k in missing)
    assert torch.equal(classifier.backbone.norm3.weight, state['norm.weight'])


# ----------------------------------------------------------------------------
# mmdtl.converters.swin and tools/model_converters/swin_to_mmpretrain.py

@pytest.fixture(scope='module')
def converter_cli(load_cli):
    return load_cli('tools/model_converters/swin_to_mmpretrain.py')


def official_index(window):
    """relative_position_index as computed in microsoft/Swin-Transformer."""
    coords = torch.stack(torch.meshgrid([torch.arange(window)] * 2, indexing='ij'))
    coords = torch.flatten(coords, 1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0).contiguous()
    relative[:, :, 0] += window - 1
    relative[:, :, 1] += window - 1
    relative[:, :, 0] *= 2 * window - 1
    return relative.sum(-1)


def official_checkpoint(window=4, num_classes=5, seed=0):
    """A tiny Swin (TINY arch) with the keys and shapes of the official release."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen)

    sd = {'patch_embed.proj.weight': rand(16, 3, 4, 4), 'patch_embed.proj.bias': rand(16),
          'patch_embed.norm.weight': rand(16), 'patch_embed.norm.bias': rand(16)}
    for s, (depth, heads) in enumerate(zip(TINY['depths'], TINY['num_heads'])):
        dims = DIMS[s]
        for b in range(depth):
            p = f'layers.{s}.blocks.{b}.'
            sd.update({
                p + 'norm1.weight': rand(dims), p + 'norm1.bias': rand(dims),
                p + 'attn.relative_position_bias_table': rand((2 * window - 1)**2, heads),
                p + 'attn.relative_position_index': official_index(window),
                p + 'attn.qkv.weight': rand(3 * dims, dims), p + 'attn.qkv.bias': rand(3 * dims),
                p + 'attn.proj.weight': rand(dims, dims), p + 'attn.proj.bias': rand(dims),
                p + 'norm2.weight': rand(dims), p + 'norm2.bias': rand(dims),
                p + 'mlp.fc1.weight': rand(4 * dims, dims), p + 'mlp.fc1.bias': rand(4 * dims),
                p + 'mlp.fc2.weight': rand(dims, 4 * dims), p + 'mlp.fc2.bias': rand(dims),
            })
            if b % 2:
                sd[p + 'attn_mask'] = rand(4, window**2, window**2)
        if s < 3:
            sd.update({f'layers.{s}.downsample.reduction.weight': rand(2 * dims, 4 * dims),
                       f'layers.{s}.downsample.norm.weight': rand(4 * dims),
                       f'layers.{s}.downsample.norm.bias': rand(4 * dims)})
    sd.update({'norm.weight': rand(128), 'norm.bias': rand(128),
               'head.weight': rand(num_classes, 128), 'head.bias': rand(num_classes)})
    return sd


def to_timm(official, flat_names=False):
    """The same weights in the timm >= 0.9 layout (merging at the start of
    the next stage, ``head.fc``, no buffers)."""
    out = {}
    for key, value in official.items():
        if 'relative_position_index' in key or 'attn_mask' in key:
            continue
        key = re.sub(r'^layers\.(\d+)\.downsample',
                               lambda m: f'layers.{int(m.group(1)) + 1}.downsample', key)
        key = key.replace('head.', 'head.fc.')
        if flat_names:
            key = re.sub(r'^layers\.(\d+)\.', r'layers_\1.', key)
        out[key] = value
    return out


def official_merge(x, hw, reduction, norm_weight, norm_bias):
    """Patch merging of the released code (x0..x3 concatenated)."""
    batch, _, dims = x.shape
    x = x.view(batch, *hw, dims)
    x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
    x = F.layer_norm(x.view(batch, -1, 4 * dims), (4 * dims, ), norm_weight, norm_bias)
    return F.linear(x, reduction)


@pytest.mark.parametrize('layout', ['official', 'timm', 'timm_flat'])
def test_converter_layouts_load_strict(layout):
    official = official_checkpoint()
    source = official if layout == 'official' else to_timm(official, layout == 'timm_flat')
    state_dict, meta = converter.convert_swin(source, src=f'{layout}.pth')
    assert meta['layout'] == layout.split('_')[0]
    assert meta['arch'] == TINY
    assert meta['window_size'] == 4 and meta['patch_size'] == 4
    assert meta['head'] == dict(num_classes=5, kept=False)
    model = SwinTransformer(arch=TINY, window_size=4, pad_small_map=True)
    fresh = model.state_dict()
    model.load_state_dict(state_dict, strict=True)
    # The regenerated index buffers are mmpretrain's own (so the bias tables
    # need no reordering) and equal the released formula.
    for key, value in fresh.items():
        if key.endswith('relative_position_index'):
            assert torch.equal(value, state_dict[key]) and torch.equal(value, official_index(4))
    assert torch.equal(model.norm3.weight, official['norm.weight'])
    assert torch.equal(model.stages[2].blocks[1].ffn.layers[0][0].weight,
                       official['layers.2.blocks.1.mlp.fc1.weight'])
    assert torch.equal(model.stages[3].blocks[0].attn.w_msa.relative_position_bias_table,
                       official['layers.3.blocks.0.attn.relative_position_bias_table'])
    # Patch merging: mmcv's PatchMerging (nn.Unfold order) with converted
    # weights equals the released merge with the original weights.
    gen = torch.Generator().manual_seed(1)
    for s, hw in enumerate([(8, 6), (4, 4), (6, 2)]):
        x = torch.randn(2, hw[0] * hw[1], DIMS[s], generator=gen)
        p = f'layers.{s}.downsample.'
        expected = official_merge(x, hw, official[p + 'reduction.weight'],
                                  official[p + 'norm.weight'], official[p + 'norm.bias'])
        with torch.no_grad():
            out, out_hw = model.stages[s].downsample(x, hw)
        assert out_hw == (hw[0] // 2, hw[1] // 2)
        # Float rounding only (values are O(10)); a wrong order is off by O(1).
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_unfold_permutation_is_needed():
    """Without the reordering the merge differs: the check above can fail."""
    official = official_checkpoint()
    x, hw = torch.randn(1, 16, 16), (4, 4)
    merge = SwinTransformer(arch=TINY, window_size=4).stages[0].downsample
    p = 'layers.0.downsample.'
    expected = official_merge(x, hw, official[p + 'reduction.weight'],
                              official[p + 'norm.weight'], official[p + 'norm.bias'])
    merge.reduction.weight.data.copy_(official[p + 'reduction.weight'])
    merge.norm.weight.data.copy_(official[p + 'norm.weight'])
    merge.norm.bias.data.copy_(official[p + 'norm.bias'])
    with torch.no_grad():
        assert not torch.allclose(merge(x, hw)[0], expected, rtol=1e-2, atol=1e-2)
    # The permutation is an exact inverse pair of index maps (no mixing).
    weight = torch.arange(4 * 3).float().view(1, 12)
    assert converter.unfold_reduction_order(weight).tolist() == [
        [0, 6, 3, 9, 1, 7, 4, 10, 2, 8, 5, 11]]


def test_converter_cli_and_dtl_swin_loading(tmp_path, converter_cli):
    src, dst = tmp_path / 'swin_official.pth', tmp_path / 'out' / 'swin_mmpretrain.pth'
    official = official_checkpoint()
    torch.save({'model': official}, src)
    assert converter_cli.main([str(src), str(dst), '--keep-head']) == 0
    assert sorted(p.name for p in dst.parent.iterdir()) == [dst.name]  # no temp left
    ckpt = torch.load(dst, map_location='cpu', weights_only=True)
    assert ckpt['meta']['layout'] == 'official' and ckpt['meta']['head']['kept']
    assert torch.equal(ckpt['state_dict']['head.fc.weight'], official['head.weight'])
    assert not any('attn_mask' in k for k in ckpt['state_dict'])
    # DTLSwin loads it through init_cfg, CSN untouched (B = 0).
    model = MODELS.build(dict(type='DTLSwin', **SWIN,
                              csn=dict(type='CompactSideNetwork', start=3, dwconv_kernel=3),
                              init_cfg=dict(type='Pretrained', checkpoint=str(dst))))
    model.init_weights()
    assert torch.equal(model.stages[1].blocks[0].attn.w_msa.qkv.weight,
                       official['layers.1.blocks.0.attn.qkv.weight'])
    assert torch.equal(model.norm3.bias, official['norm.bias'])
    assert all(p.abs().sum() == 0 for p in model.csn.up_projs.values())


def test_converter_errors(tmp_path, capsys, converter_cli):
    official = official_checkpoint()
    # Already in mmpretrain format: not a Swin release layout.
    state_dict, _ = converter.convert_swin(official)
    with pytest.raises(converter.ConversionError, match=r'mmp\.pth: unknown key layout'):
        converter.convert_swin(state_dict, src='mmp.pth')
    # Merging in neither the official nor the timm stages.
    broken = {k: v for k, v in official.items() if not k.startswith('layers.1.downsample')}
    with pytest.raises(converter.ConversionError, match=r'x\.pth: unknown Swin layout.*\[0, 2\]'):
        converter.convert_swin(broken, src='x.pth')
    # Unknown keys are reported, not silently dropped.
    with pytest.raises(converter.ConversionError, match=r'y\.pth: 1 keys .*layers\.0\.blocks'):
        converter.convert_swin({**official, 'layers.0.blocks.0.gamma': torch.ones(1)},
                               src='y.pth')
    # Pickled objects are refused (weights_only=True), naming the file.
    bad = tmp_path / 'pickled.pth'
    torch.save({'model': official, 'config': _Opaque()}, bad)  # e.g. a yacs config
    assert converter_cli.main([str(bad), str(tmp_path / 'o.pth')]) == 1
    err = capsys.readouterr().err
    assert 'pickled.pth' in err and 'weights_only=True' in err
    assert not (tmp_path / 'o.pth').exists()
    assert converter_cli.main([str(tmp_path / 'missing.pth'), str(tmp_path / 'o.pth')]) == 1
    assert 'missing.pth: no such file' in capsys.readouterr().err


class _Opaque:
    """Stands for a non-tensor object pickled into a checkpoint."""
