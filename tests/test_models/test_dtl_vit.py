"""DTLViT + CompactSideNetwork: equations, memory, freezing, counts, errors."""
import copy

import pytest
import torch
import torch.nn.functional as F
from mmpretrain.models import VisionTransformer
from mmpretrain.registry import MODELS

import mmdtl  # noqa: F401
from mmdtl.models import CompactSideNetwork

TINY = dict(embed_dims=16, num_layers=4, num_heads=2, feedforward_channels=32)


def tiny_vit(start=2, taps=None, kernel=3, rank=2, **kwargs):
    torch.manual_seed(0)
    model = MODELS.build(dict(
        type='DTLViT', arch=TINY, img_size=16, patch_size=4,
        csn=dict(type='CompactSideNetwork', rank=rank, taps=taps, start=start,
                 beta=100., dwconv_kernel=kernel), **kwargs))
    # Non-zero B so the side network changes the output (B starts at zero).
    for up in model.csn.up_projs.values():
        torch.nn.init.normal_(up, std=0.5)
    return model


def reference_forward(model, images):
    """DTL written out directly from the paper's equations."""
    csn = model.csn
    tokens, grid = model.patch_embed(images)
    tokens = torch.cat([model.cls_token.expand(len(images), -1, -1), tokens], dim=1)
    tokens = tokens + model.pos_embed
    running_sum = torch.zeros_like(tokens)
    for i, layer in enumerate(model.layers):
        if i in csn.taps:
            a, b = csn.down_projs[str(i)], csn.up_projs[str(i)]
            running_sum = running_sum + tokens @ a.T @ b.T
        tokens = layer(tokens)
        if i >= csn.start:
            side = running_sum * torch.sigmoid(100. * running_sum)
            if csn.dwconv_kernel:
                weight = csn.dwconvs['0'].weight
                patches = side[:, 1:].transpose(1, 2).reshape(len(images), -1, *grid)
                # 'same' padding; an even kernel pads one more at the end.
                k = csn.dwconv_kernel
                patches = F.pad(patches, ((k - 1) // 2, k // 2, (k - 1) // 2, k // 2))
                patches = F.conv2d(patches, weight, groups=patches.shape[1])
                side = torch.cat([side[:, :1], patches.flatten(2).transpose(1, 2)], dim=1)
            tokens = tokens + side
    return model.ln2(tokens[:, 1:].mean(dim=1))


@pytest.mark.parametrize('kernel', [0, 3, 4, 5])
@pytest.mark.parametrize('start,taps', [(2, None), (1, [0, 2]), (0, [0])])
def test_equations_match_direct_computation(kernel, start, taps):
    model = tiny_vit(start=start, taps=taps, kernel=kernel).eval()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        out = model(images)[0]
        expected = reference_forward(model, images)
    assert out.shape == (2, 16)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    # The side network really changes the output.
    plain = copy.deepcopy(model)
    for up in plain.csn.up_projs.values():
        up.data.zero_()
    with torch.no_grad():
        assert not torch.allclose(plain(images)[0], out)


def test_zero_init_is_identity_to_frozen_backbone():
    torch.manual_seed(0)
    model = MODELS.build(dict(type='DTLViT', arch=TINY, img_size=16, patch_size=4,
                              csn=dict(type='CompactSideNetwork', dwconv_kernel=3))).eval()
    parent = VisionTransformer(arch=TINY, img_size=16, patch_size=4,
                               out_type='avg_featmap', final_norm=False)
    parent.eval()  # BaseBackbone.train returns None: no chaining
    parent.load_state_dict(
        {k: v for k, v in model.state_dict().items() if not k.startswith('csn.')})
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(images)[0], parent(images)[0])


def test_csn_state_dict_and_init():
    csn = CompactSideNetwork(embed_dims=8, num_layers=3, rank=2, dwconv_kernel=3)
    assert sorted(csn.state_dict()) == [
        'down_projs.0', 'down_projs.1', 'down_projs.2', 'dwconvs.0.weight',
        'up_projs.0', 'up_projs.1', 'up_projs.2']
    assert all(p.abs().sum() == 0 for p in csn.up_projs.values())
    assert all(p.abs().sum() > 0 for p in csn.down_projs.values())
    assert csn.start == 1 and csn.adds_back == [1, 2]


def test_only_csn_trains_and_backbone_bit_identical():
    model = tiny_vit(start=1, drop_path_rate=0.1)
    model.train()
    head = torch.nn.Linear(16, 3)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith('csn.') for n in trainable)
    frozen_before = {k: v.clone() for k, v in model.state_dict().items()
                     if not k.startswith('csn.')}
    csn_before = {k: v.clone() for k, v in model.csn.state_dict().items()}
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.05)
    for _ in range(4):
        loss = F.cross_entropy(head(model(torch.randn(4, 3, 16, 16))[0]),
                               torch.tensor([0, 1, 2, 0]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for key, value in model.state_dict().items():
        if key.startswith('csn.'):
            assert not torch.equal(value, csn_before[key.split('.', 1)[1]]), key
        else:
            assert torch.equal(value, frozen_before[key]), key


class SavedTensorLog:
    """Records the bytes autograd saves for backward, grouped by where they
    were saved (inside block i, or outside any block = CSN taps / add-backs)."""

    def __init__(self, model):
        self.where = 'outside'
        self.saved = {}
        for i, layer in enumerate(model.layers):
            layer.register_forward_pre_hook(lambda m, a, i=i: setattr(self, 'where', i))
            layer.register_forward_hook(lambda m, a, o: setattr(self, 'where', 'outside'))

    def pack(self, tensor):
        self.saved.setdefault(self.where, {})[
            tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    def bytes(self, where):
        return sum(self.saved.get(where, {}).values())


def saved_bytes(model, images):
    log = SavedTensorLog(model)
    with torch.autograd.graph.saved_tensors_hooks(log.pack, lambda t: t):
        model(images)[0].sum().backward()
    return log


def test_frozen_prefix_saves_nothing_beyond_tap_inputs():
    images = torch.randn(2, 3, 16, 16)
    start = 2
    model = tiny_vit(start=start).train()
    log = saved_bytes(model, images)
    for i in range(start + 1):  # blocks 0..M never see task-specific input
        assert log.bytes(i) == 0, f'block {i} saved tensors for backward'
    assert all(log.bytes(i) > 0 for i in range(start + 1, 4))
    # Outside the blocks: tap inputs (B, N, C) and their rank projections,
    # plus the add-back activations; nothing of the size of attention maps.
    tokens = 2 * 17 * 16 * 4
    assert log.bytes('outside') <= 4 * tokens * 3
    # The same model fully fine-tuned saves activations in every block.
    full = tiny_vit(start=start, freeze_backbone=False).train()
    full_log = saved_bytes(full, images)
    assert all(full_log.bytes(i) > 0 for i in range(4))
    total = sum(log.bytes(w) for w in log.saved)
    full_total = sum(full_log.bytes(w) for w in full_log.saved)
    assert total < 0.7 * full_total


def test_param_counts_vit_b16():
    dtl = MODELS.build(dict(type='DTLViT', arch='b', csn=dict(
        type='CompactSideNetwork', rank=2, taps=list(range(12)), start=6, dwconv_kernel=0)))
    dtl_plus = MODELS.build(dict(type='DTLViT', arch='b', csn=dict(
        type='CompactSideNetwork', rank=2, taps=list(range(12)), start=6, dwconv_kernel=3)))

    def trainable(m):
        return sum(p.numel() for p in m.parameters() if p.requires_grad)

    assert trainable(dtl) == 36_864
    assert trainable(dtl_plus) == 43_776
    assert sum(p.numel() for p in dtl_plus.csn.parameters()) == 43_776
    # DTL+ runs at 224 and 384 px (pos-embed resized, conv on the real grid).
    dtl_plus.eval()
    with torch.no_grad():
        for size in (224, 384):
            assert dtl_plus(torch.randn(1, 3, size, size))[0].shape == (1, 768)


@pytest.mark.parametrize('out_type,shape', [
    ('cls_token', (2, 16)), ('featmap', (2, 16, 4, 4)), ('raw', (2, 17, 16))])
def test_other_out_types_and_indices(out_type, shape):
    torch.manual_seed(0)
    model = MODELS.build(dict(type='DTLViT', arch=TINY, img_size=16, patch_size=4,
                              out_type=out_type, final_norm=True, out_indices=(1, 3),
                              csn=dict(type='CompactSideNetwork', start=1, dwconv_kernel=3)))
    outs = model(torch.randn(2, 3, 16, 16))
    assert len(outs) == 2 and all(o.shape == shape for o in outs)


def test_rectangular_and_other_patch_sizes():
    model = MODELS.build(dict(type='DTLViT', arch=TINY, img_size=16, patch_size=8,
                              csn=dict(type='CompactSideNetwork', dwconv_kernel=3)))
    assert model(torch.randn(1, 3, 32, 48))[0].shape == (1, 16)


def test_pretrained_final_norm_loads_into_ln2(tmp_path):
    torch.manual_seed(0)
    parent = VisionTransformer(arch=TINY, img_size=16, patch_size=4)  # has ln1
    torch.nn.init.normal_(parent.ln1.weight)
    ckpt = tmp_path / 'vit.pth'
    torch.save({'state_dict': parent.state_dict()}, ckpt)
    model = MODELS.build(dict(type='DTLViT', arch=TINY, img_size=32, patch_size=4,
                              csn=dict(type='CompactSideNetwork'),
                              init_cfg=dict(type='Pretrained', checkpoint=str(ckpt))))
    model.init_weights()
    assert torch.equal(model.ln2.weight, parent.ln1.weight)
    assert model.pos_embed.shape == (1, 65, 16)  # resized from 4x4 to 8x8 grid
    assert torch.equal(model.layers[0].attn.qkv.weight, parent.layers[0].attn.qkv.weight)
    assert all(p.abs().sum() == 0 for p in model.csn.up_projs.values())


@pytest.mark.parametrize('csn,match', [
    (dict(start=4), r'csn.start .* \[0, 3\]'),
    (dict(start=-1), r'csn.start'),
    (dict(rank=0), r'csn.rank must be an int >= 1'),
    (dict(taps=[0, 7]), r'csn.taps .* \[0, 3\].*\[7\]'),
    (dict(dwconv_kernel=-3), r'csn.dwconv_kernel must be 0 \(DTL\) or a kernel size >= 1'),
    (dict(taps=[3], start=1), r'block 1 adds back'),
])
def test_bad_csn_options(csn, match):
    with pytest.raises(ValueError, match=match):
        MODELS.build(dict(type='DTLViT', arch=TINY, img_size=16, patch_size=4,
                          csn=dict(type='CompactSideNetwork', **csn)))


def test_csn_slot_is_swappable_from_config():
    model = MODELS.build(dict(type='DTLViT', arch=TINY, img_size=16, patch_size=4,
                              csn=dict(type='CompactSideNetwork', rank=3, beta=10.)))
    assert model.csn.rank == 3 and model.csn.beta == 10.
    with pytest.raises(TypeError, match='csn must be a dict'):
        MODELS.build(dict(type='DTLViT', arch=TINY, img_size=16, patch_size=4, csn='x'))
