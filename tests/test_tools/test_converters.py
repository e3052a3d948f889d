"""Tests of mmdtl.converters and their command lines (tools/model_converters):
Google ViT .npz -> mmpretrain and official DTL -> mmdtl.

Checkpoints are generated here with the real key layouts of a tiny ViT, and
every conversion is checked against a forward pass reimplemented in this file
from the source layout (float64), not through the converted keys.
"""
import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmdtl.converters import official_dtl, vit_npz
from mmdtl.utils import save_checkpoint_atomic

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / 'tools' / 'model_converters'

# The tiny ViT: 16x16 images, 4x4 patches (4x4 grid), 32 dims, 4 heads.
DIMS, HEADS, MLP, PATCH, GRID, CLASSES = 32, 4, 64, 4, 4, 5
IMG = PATCH * GRID


@pytest.fixture(scope='module')
def npz_cli(load_cli):
    return load_cli('tools/model_converters/vit_npz_to_mmpretrain.py')


@pytest.fixture(scope='module')
def dtl_cli(load_cli):
    return load_cli('tools/model_converters/official_dtl_to_mmdtl.py')


@pytest.fixture(scope='module')
def swin_cli(load_cli):
    return load_cli('tools/model_converters/swin_to_mmpretrain.py')


def _run_tool(name, *args):
    return subprocess.run([sys.executable, str(TOOLS / f'{name}.py'), *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def _images(batch=2, seed=0):
    return torch.randn(batch, 3, IMG, IMG, generator=torch.Generator().manual_seed(seed))


def _layer_norm(x, weight, bias):
    return F.layer_norm(x, x.shape[-1:], weight, bias, eps=1e-6)


# ---------------------------------------------------------------- Google ViT
def make_google_npz(depth=2, pre_logits=None, seed=0):
    """Random arrays with the key layout and shapes of Google's ViT-B_16.npz."""
    rng = np.random.default_rng(seed)

    def rand(*shape, scale=0.2):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    head_dim = DIMS // HEADS
    w = {
        'embedding/kernel': rand(PATCH, PATCH, 3, DIMS),  # HWIO
        'embedding/bias': rand(DIMS),
        'cls': rand(1, 1, DIMS),
        'Transformer/posembed_input/pos_embedding': rand(1, GRID * GRID + 1, DIMS),
        'Transformer/encoder_norm/scale': 1 + rand(DIMS),
        'Transformer/encoder_norm/bias': rand(DIMS),
    }
    for i in range(depth):
        b = f'Transformer/encoderblock_{i}/'
        for norm in ('LayerNorm_0', 'LayerNorm_2'):
            w[f'{b}{norm}/scale'] = 1 + rand(DIMS)
            w[f'{b}{norm}/bias'] = rand(DIMS)
        for part in ('query', 'key', 'value'):
            w[f'{b}MultiHeadDotProductAttention_1/{part}/kernel'] = rand(DIMS, HEADS, head_dim)
            w[f'{b}MultiHeadDotProductAttention_1/{part}/bias'] = rand(HEADS, head_dim)
        w[f'{b}MultiHeadDotProductAttention_1/out/kernel'] = rand(HEADS, head_dim, DIMS)
        w[f'{b}MultiHeadDotProductAttention_1/out/bias'] = rand(DIMS)
        w[f'{b}MlpBlock_3/Dense_0/kernel'] = rand(DIMS, MLP)
        w[f'{b}MlpBlock_3/Dense_0/bias'] = rand(MLP)
        w[f'{b}MlpBlock_3/Dense_1/kernel'] = rand(MLP, DIMS)
        w[f'{b}MlpBlock_3/Dense_1/bias'] = rand(DIMS)
    width = DIMS
    if pre_logits:
        w['pre_logits/kernel'] = rand(DIMS, pre_logits)
        w['pre_logits/bias'] = rand(pre_logits)
        width = pre_logits
    w['head/kernel'] = rand(width, 7)
    w['head/bias'] = rand(7)
    return w


def google_vit_forward(w, images):
    """The flax ViT forward in float64 (NHWC, per-head q/k/v kernels).

    Returns the tokens before the final norm, after it, and the logits.
    """
    def g(key):
        return torch.from_numpy(w[key]).double()

    x = images.double().permute(0, 2, 3, 1)  # NHWC like flax
    batch, height, width, chans = x.shape
    kernel = g('embedding/kernel')
    ph, pw = kernel.shape[:2]
    patches = x.reshape(batch, height // ph, ph, width // pw, pw, chans)
    x = torch.einsum('bhpwqc,pqcd->bhwd', patches, kernel) + g('embedding/bias')
    x = x.reshape(batch, -1, kernel.shape[-1])
    x = torch.cat([g('cls').expand(batch, -1, -1), x], dim=1)
    x = x + g('Transformer/posembed_input/pos_embedding')
    depth = len({k.split('/')[1] for k in w if 'encoderblock_' in k})
    for i in range(depth):
        b = f'Transformer/encoderblock_{i}/'
        a = b + 'MultiHeadDotProductAttention_1/'
        y = _layer_norm(x, g(b + 'LayerNorm_0/scale'), g(b + 'LayerNorm_0/bias'))
        q, k, v = (torch.einsum('bnd,dhk->bhnk', y, g(f'{a}{n}/kernel'))
                   + g(f'{a}{n}/bias')[:, None] for n in ('query', 'key', 'value'))
        attn = torch.softmax(q @ k.transpose(-2, -1) / q.shape[-1]**0.5, dim=-1)
        x = x + torch.einsum('bhnk,hkd->bnd', attn @ v, g(a + 'out/kernel')) + g(a + 'out/bias')
        y = _layer_norm(x, g(b + 'LayerNorm_2/scale'), g(b + 'LayerNorm_2/bias'))
        m = b + 'MlpBlock_3/'
        y = F.gelu(y @ g(m + 'Dense_0/kernel') + g(m + 'Dense_0/bias'))  # exact GELU
        x = x + y @ g(m + 'Dense_1/kernel') + g(m + 'Dense_1/bias')
    normed = _layer_norm(x, g('Transformer/encoder_norm/scale'), g('Transformer/encoder_norm/bias'))
    feat = normed[:, 0]
    if 'pre_logits/kernel' in w:
        feat = torch.tanh(feat @ g('pre_logits/kernel') + g('pre_logits/bias'))
    return x, normed, feat @ g('head/kernel') + g('head/bias')


def to_big_vision(w, prefix='params/'):
    """The same weights in big_vision's naming with the blocks stacked (scan)."""
    rename = {'MultiHeadDotProductAttention_1': 'MultiHeadDotProductAttention_0',
              'LayerNorm_2': 'LayerNorm_1', 'MlpBlock_3': 'MlpBlock_0'}
    out, stacked = {}, {}
    for key, value in w.items():
        parts = key.split('/')
        if key.startswith('Transformer/encoderblock_'):
            index = int(parts[1].split('_')[1])
            name = '/'.join(rename.get(p, p) for p in parts[2:])
            stacked.setdefault(name, {})[index] = value
        elif key == 'Transformer/posembed_input/pos_embedding':
            out[prefix + 'pos_embedding'] = value
        else:
            out[prefix + key] = value
    for name, per_block in stacked.items():
        out[f'{prefix}Transformer/encoderblock/{name}'] = np.stack(
            [per_block[i] for i in sorted(per_block)])
    return out


def _tiny_vit(depth=2):
    from mmpretrain.models import VisionTransformer
    model = VisionTransformer(
        arch=dict(embed_dims=DIMS, num_layers=depth, num_heads=HEADS, feedforward_channels=MLP),
        img_size=IMG, patch_size=PATCH, out_type='cls_token', final_norm=True)
    model.eval()  # BaseBackbone.train returns None, so no chaining
    return model


def test_npz_to_mmpretrain_matches_google_forward(tmp_path):
    weights = make_google_npz()
    src, dst = tmp_path / 'ViT-Ti_4.npz', tmp_path / 'out' / 'vit.pth'
    np.savez(src, **weights)
    result = _run_tool('vit_npz_to_mmpretrain', src, dst)
    assert result.returncode == 0, result.stderr
    assert "'num_heads': 4" in result.stdout and 'head: 7 classes, dropped' in result.stdout

    ckpt = torch.load(dst, map_location='cpu', weights_only=True)
    assert not any(k.startswith(('head', 'pre_logits')) for k in ckpt['state_dict'])
    assert ckpt['meta']['arch'] == dict(embed_dims=DIMS, num_layers=2, num_heads=HEADS,
                                        feedforward_channels=MLP)
    assert (ckpt['meta']['img_size'], ckpt['meta']['patch_size']) == (IMG, PATCH)
    model = _tiny_vit()
    model.load_state_dict(ckpt['state_dict'], strict=True)
    before_norm = []
    model.layers[-1].register_forward_hook(lambda m, i, out: before_norm.append(out))
    images = _images()
    with torch.no_grad():
        cls_token = model(images)[0]
    ref_tokens, ref_normed, _ = google_vit_forward(weights, images)
    torch.testing.assert_close(before_norm[0].double(), ref_tokens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cls_token.double(), ref_normed[:, 0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('layout', ['opt/target', 'big_vision'])
def test_npz_prefixed_and_stacked_layouts(layout):
    weights = make_google_npz()
    reference, _ = vit_npz.convert_npz(weights)
    if layout == 'opt/target':  # a flax training checkpoint: optimizer state beside it
        other = {'opt/target/' + k: v for k, v in weights.items()}
        other['opt/state/step'] = np.array(1000)
    else:
        other = to_big_vision(weights)
    converted, meta = vit_npz.convert_npz(other, src=f'{layout}.npz')
    assert converted.keys() == reference.keys()
    for key, value in reference.items():
        assert torch.equal(converted[key], value), key
    assert meta['arch']['num_layers'] == 2
    assert meta['ignored'] == (layout == 'opt/target')


def test_npz_keep_head():
    from mmpretrain.models.heads import LinearClsHead, VisionTransformerClsHead
    images = _images()
    for pre_logits, head in ((None, LinearClsHead(num_classes=7, in_channels=DIMS)),
                             (24, VisionTransformerClsHead(num_classes=7, in_channels=DIMS,
                                                           hidden_dim=24))):
        weights = make_google_npz(pre_logits=pre_logits)
        state_dict, meta = vit_npz.convert_npz(
            weights, keep_head=True, head_type=type(head).__name__)
        assert meta['head']['kept']
        model = _tiny_vit()
        model.load_state_dict(
            {k: v for k, v in state_dict.items() if not k.startswith('head.')}, strict=True)
        head.load_state_dict(
            {k[len('head.'):]: v for k, v in state_dict.items() if k.startswith('head.')},
            strict=True)
        with torch.no_grad():
            logits = head(model(images))
        torch.testing.assert_close(
            logits.double(), google_vit_forward(weights, images)[2], atol=1e-5, rtol=1e-5)
    # A tanh pre-logits layer cannot live in a LinearClsHead.
    with pytest.raises(vit_npz.ConversionError, match='VisionTransformerClsHead'):
        vit_npz.convert_npz(make_google_npz(pre_logits=24), src='x.npz', keep_head=True)


def _broken_npz(kind):
    weights = make_google_npz()
    if kind == 'missing':
        del weights['Transformer/encoderblock_1/LayerNorm_2/scale']
    elif kind == 'unknown':
        weights['Transformer/encoderblock_0/Adapter/kernel'] = np.zeros((2, 2), np.float32)
    elif kind == 'not_vit':
        weights = {'conv1/kernel': np.zeros((3, 3, 3, 8), np.float32)}
    return weights


@pytest.mark.parametrize('kind,match', [
    ('missing', 'encoderblock_1/LayerNorm_2/scale'),
    ('unknown', 'encoderblock_0/Adapter/kernel'),
    ('not_vit', 'unknown key layout'),
    ('not_npz', 'not a readable .npz'),
])
def test_npz_errors_name_the_file(tmp_path, capsys, kind, match, npz_cli):
    src, dst = tmp_path / f'bad_{kind}.npz', tmp_path / 'out.pth'
    if kind == 'not_npz':
        src.write_text('this is not an archive')
    else:
        np.savez(src, **_broken_npz(kind))
    assert npz_cli.main([str(src), str(dst)]) == 1
    err = capsys.readouterr().err
    assert str(src) in err and match in err
    assert not dst.exists() and sorted(p.name for p in tmp_path.iterdir()) == [src.name]


# -------------------------------------------------------------- official DTL
def make_official_dtl(depth=4, taps=(0, 1, 2, 3), fusion=3, rank=2, seed=0):
    """A state dict of the official DTL code (timm 0.5.4 ViT + lora_*)."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.2):
        return torch.randn(*shape, generator=gen) * scale

    sd = {
        'cls_token': rand(1, 1, DIMS),
        'pos_embed': rand(1, GRID * GRID + 1, DIMS),
        'patch_embed.proj.weight': rand(DIMS, 3, PATCH, PATCH),
        'patch_embed.proj.bias': rand(DIMS),
    }
    for i in range(depth):
        b = f'blocks.{i}.'
        sd.update({
            b + 'norm1.weight': 1 + rand(DIMS), b + 'norm1.bias': rand(DIMS),
            b + 'attn.qkv.weight': rand(3 * DIMS, DIMS), b + 'attn.qkv.bias': rand(3 * DIMS),
            b + 'attn.proj.weight': rand(DIMS, DIMS), b + 'attn.proj.bias': rand(DIMS),
            b + 'norm2.weight': 1 + rand(DIMS), b + 'norm2.bias': rand(DIMS),
            b + 'mlp.fc1.weight': rand(MLP, DIMS), b + 'mlp.fc1.bias': rand(MLP),
            b + 'mlp.fc2.weight': rand(DIMS, MLP), b + 'mlp.fc2.bias': rand(DIMS),
        })
    sd.update({'norm.weight': 1 + rand(DIMS), 'norm.bias': rand(DIMS),
               'head.weight': rand(CLASSES, DIMS), 'head.bias': rand(CLASSES)})
    for i in taps:
        # B is zero-initialised in training; a trained, non-zero B makes the CSN matter.
        sd[f'lora_dict.{i}.lora_A'] = rand(rank, DIMS, scale=0.5)
        sd[f'lora_dict.{i}.lora_B'] = rand(DIMS, rank, scale=0.5)
    if fusion:
        sd['lora_fusion.weight'] = rand(DIMS, 1, fusion, fusion, scale=0.5)
    return sd


def official_dtl_forward(sd, images, taps, add_after, beta=100.):
    """The forward of the official DTL VisionTransformer, in float64."""
    def g(key):
        return sd[key].double()

    x = F.conv2d(images.double(), g('patch_embed.proj.weight'), g('patch_embed.proj.bias'),
                 stride=PATCH)
    batch, dims, grid_h, grid_w = x.shape
    x = torch.cat([g('cls_token').expand(batch, -1, -1), x.flatten(2).transpose(1, 2)], dim=1)
    x = x + g('pos_embed')
    residuals = 0.
    depth = len({k.split('.')[1] for k in sd if k.startswith('blocks.')})
    for i in range(depth):
        if i in taps:
            residuals = residuals + x @ g(f'lora_dict.{i}.lora_A').T @ g(f'lora_dict.{i}.lora_B').T
        b = f'blocks.{i}.'
        num = x.shape[1]
        y = _layer_norm(x, g(b + 'norm1.weight'), g(b + 'norm1.bias'))
        qkv = F.linear(y, g(b + 'attn.qkv.weight'), g(b + 'attn.qkv.bias'))
        q, k, v = qkv.reshape(batch, num, 3, HEADS, dims // HEADS).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * (dims // HEADS)**-0.5).softmax(dim=-1)
        y = (attn @ v).transpose(1, 2).reshape(batch, num, dims)
        x = x + F.linear(y, g(b + 'attn.proj.weight'), g(b + 'attn.proj.bias'))
        y = _layer_norm(x, g(b + 'norm2.weight'), g(b + 'norm2.bias'))
        y = F.gelu(F.linear(y, g(b + 'mlp.fc1.weight'), g(b + 'mlp.fc1.bias')))
        x = x + F.linear(y, g(b + 'mlp.fc2.weight'), g(b + 'mlp.fc2.bias'))
        if i in add_after:
            act = residuals * torch.sigmoid(residuals * beta)
            if 'lora_fusion.weight' in sd:
                patches = act[:, 1:].reshape(batch, grid_h, grid_w, dims).permute(0, 3, 1, 2)
                patches = F.conv2d(patches, g('lora_fusion.weight'), padding='same', groups=dims)
                patches = patches.permute(0, 2, 3, 1).reshape(batch, grid_h * grid_w, dims)
                act = torch.cat([act[:, :1], patches], dim=1)
            x = x + act
    x = _layer_norm(x[:, 1:].mean(dim=1), g('norm.weight'), g('norm.bias'))
    return F.linear(x, g('head.weight'), g('head.bias'))


def write_tiny_config(tmp_path, base, depth, taps, start):
    """A child of a repository config, overridden for the tiny ViT."""
    cfg = tmp_path / f'tiny_{Path(base).stem}.py'
    cfg.write_text(
        f"_base_ = '{REPO / 'configs' / 'dtl' / base}'\n"
        f'model = dict(\n'
        f'    backbone=dict(\n'
        f'        arch=dict(_delete_=True, embed_dims={DIMS}, num_layers={depth}, '
        f'num_heads={HEADS}, feedforward_channels={MLP}),\n'
        f'        img_size={IMG}, patch_size={PATCH}, drop_path_rate=0., init_cfg=None,\n'
        f'        csn=dict(taps={list(taps)}, start={start})),\n'
        f'    head=dict(num_classes={CLASSES}, in_channels={DIMS}))\n')
    return cfg


def _build_classifier(config):
    from mmengine.config import Config
    from mmpretrain.models import build_classifier
    cfg = Config.fromfile(config)  # custom_imports registers mmdtl
    cfg.model.backbone.init_cfg = None
    model = build_classifier(cfg.model)
    model.eval()
    return model


@pytest.mark.parametrize('base,fusion,depth,taps,start', [
    ('vit-b_vtab-cifar.py', 3, 4, (0, 1, 2, 3), 2),  # DTL+: every block tapped
    ('vit-b_vtab-cifar_dtl.py', 0, 4, (0, 2), 2),  # DTL: a subset of taps
])
def test_official_dtl_matches_official_forward(tmp_path, capsys, base, fusion, depth, taps,
                                               start, dtl_cli):
    official = make_official_dtl(depth=depth, taps=taps, fusion=fusion)
    src, dst = tmp_path / 'official.pth', tmp_path / 'mmdtl.pth'
    # The layout of timm's checkpoint saver: a wrapper with argparse args.
    torch.save({'epoch': 99, 'state_dict': official,
                'args': argparse.Namespace(r=2, lora_before_blocks=[str(t) for t in taps])}, src)
    config = write_tiny_config(tmp_path, base, depth, taps, start)
    assert dtl_cli.main([str(src), str(dst), '--config', str(config)]) == 0
    out = capsys.readouterr().out
    assert 'rank=2' in out and 'strict=True' in out
    assert (f'kernel {fusion}' if fusion else 'DWConv: no') in out

    ckpt = torch.load(dst, map_location='cpu', weights_only=True)
    assert ckpt['meta']['taps'] == list(taps) and ckpt['meta']['dwconv_kernel'] == fusion
    model = _build_classifier(config)
    model.load_state_dict(ckpt['state_dict'], strict=True)
    images = _images(seed=1)
    with torch.no_grad():
        logits = model(images, mode='tensor')
    expected = official_dtl_forward(official, images, taps, range(start, depth))
    torch.testing.assert_close(logits.double(), expected, atol=1e-5, rtol=1e-5)
    # The side network is not a no-op here, so the check above covers it.
    without_csn = official_dtl_forward(official, images, taps, add_after=())
    assert (expected - without_csn).abs().max() > 1e-2


def test_official_dtl_subprocess_and_wrappers(tmp_path):
    official = make_official_dtl()
    reference, _ = official_dtl.convert_official(official)
    src, dst = tmp_path / 'ddp.pth', tmp_path / 'sub' / 'mmdtl.pth'
    torch.save({'model': {'module.' + k: v for k, v in official.items()}}, src)
    result = _run_tool('official_dtl_to_mmdtl', src, dst)
    assert result.returncode == 0, result.stderr
    assert 'taps=0-3' in result.stdout and 'kernel 3' in result.stdout
    state_dict = torch.load(dst, map_location='cpu', weights_only=True)['state_dict']
    assert state_dict.keys() == reference.keys()
    assert all(torch.equal(state_dict[k], v) for k, v in reference.items())
    assert state_dict['backbone.csn.down_projs.1'].shape == (2, DIMS)
    assert 'backbone.ln2.weight' in state_dict and 'backbone.ln1.weight' not in state_dict

    # --use-ema picks the EMA weights of timm's checkpoint saver.
    ema = {k: v + 1 for k, v in official.items()}
    torch.save({'state_dict': official, 'state_dict_ema': ema}, src)
    loaded = official_dtl.load_official(str(src), use_ema=True)
    assert torch.equal(loaded['cls_token'], ema['cls_token'])


class _NotATensor:
    pass


@pytest.mark.parametrize('kind,match', [
    ('plain_vit', 'plain timm ViT'),
    ('unknown', 'adapter.weight'),
    ('ranks', 'ranks [2, 3]'),
    ('pickle', 'weights_only=True'),
    ('config', 'csn.dwconv_kernel=0'),
])
def test_official_dtl_errors_name_the_file(tmp_path, capsys, kind, match, dtl_cli):
    official = make_official_dtl(depth=2, taps=(0, 1))
    src, dst = tmp_path / f'bad_{kind}.pth', tmp_path / 'out.pth'
    args = [str(src), str(dst)]
    if kind == 'plain_vit':
        official = {k: v for k, v in official.items() if not k.startswith('lora_')}
    elif kind == 'unknown':
        official['adapter.weight'] = torch.zeros(2)
    elif kind == 'ranks':
        official['lora_dict.1.lora_A'] = torch.zeros(3, DIMS)
        official['lora_dict.1.lora_B'] = torch.zeros(DIMS, 3)
    elif kind == 'pickle':
        official['extra'] = _NotATensor()
    elif kind == 'config':  # a DTL+ checkpoint checked against the plain-DTL config
        config = write_tiny_config(tmp_path, 'vit-b_vtab-cifar_dtl.py', 2, (0, 1), 1)
        args += ['--config', str(config)]
    torch.save(official, src)
    assert dtl_cli.main(args) == 1
    err = capsys.readouterr().err
    assert match in err and str(src if kind != 'config' else config) in err
    assert not dst.exists()


@pytest.mark.parametrize('lora', [True, False], ids=['released_dtl', 'plain_timm'])
def test_official_dtl_backbone_only_feeds_pretrained(tmp_path, capsys, lora, dtl_cli):
    """--backbone-only: the trunk as bare mmpretrain keys, loaded by init_cfg=Pretrained
    through the frozen-trunk check (a plain timm ViT converts this way too)."""
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS

    official = make_official_dtl(depth=2, taps=(0, 1))
    if not lora:
        official = {k: v for k, v in official.items() if not k.startswith('lora_')}
        assert dtl_cli.main([str(tmp_path / 'missing.pth'), str(tmp_path / 'x.pth')]) == 1
        src = tmp_path / 'timm.pth'
        torch.save(official, src)
        assert dtl_cli.main([str(src), str(tmp_path / 'x.pth')]) == 1  # no side network
        assert 'plain timm ViT (no lora_dict.*): convert it with --backbone-only' in \
            capsys.readouterr().err
    src, dst = tmp_path / 'src.pth', tmp_path / 'trunk.pth'
    torch.save(official, src)
    assert dtl_cli.main([str(src), str(dst), '--backbone-only']) == 0
    state = torch.load(dst, map_location='cpu', weights_only=True)['state_dict']
    assert not any(k.startswith(('backbone.', 'csn.', 'head.')) for k in state)
    assert torch.equal(state['ln1.weight'], official['norm.weight'])
    assert torch.equal(state['layers.1.ffn.layers.0.0.weight'], official['blocks.1.mlp.fc1.weight'])
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        backbone = MODELS.build(dict(
            type='DTLViT', img_size=IMG, patch_size=PATCH,
            arch=dict(embed_dims=DIMS, num_layers=2, num_heads=HEADS, feedforward_channels=MLP),
            csn=dict(type='CompactSideNetwork', rank=2, start=0),
            init_cfg=dict(type='Pretrained', checkpoint=str(dst))))
    backbone.init_weights()
    assert backbone.trunk_source == str(dst)
    assert torch.equal(backbone.ln2.weight, official['norm.weight'])
    assert torch.equal(backbone.layers[0].attn.qkv.weight, official['blocks.0.attn.qkv.weight'])


class _RunsCommand:

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, (f'touch {self.path}', )


@pytest.mark.parametrize('zip_format', [True, False], ids=['zip', 'legacy'])
def test_official_dtl_refusal_names_the_global(tmp_path, capsys, zip_format, dtl_cli):
    """The refused global is named, in the legacy torch.save format too (torch's message
    for it does not say 'WeightsUnpickler error:', and the name used to be lost)."""
    marker = tmp_path / 'pwned'
    src = tmp_path / 'evil.pth'
    official = make_official_dtl(depth=2, taps=(0, 1))
    torch.save(dict(model=official, args=argparse.Namespace(lr=1.0), extra=_RunsCommand(marker)),
               src, _use_new_zipfile_serialization=zip_format)
    assert dtl_cli.main([str(src), str(tmp_path / 'out.pth')]) == 1
    err = capsys.readouterr().err
    assert f'Refusing to load checkpoint {src}' in err and '.system' in err, err
    assert not marker.exists() and not (tmp_path / 'out.pth').exists()


@pytest.mark.parametrize('cut', [0, 200])
def test_converters_name_a_truncated_file_in_one_line(tmp_path, capsys, cut, dtl_cli,
                                                      swin_cli):
    full = tmp_path / 'full.pth'
    torch.save(make_official_dtl(depth=2, taps=(0, 1)), full)
    src = tmp_path / 'cut.pth'
    src.write_bytes(full.read_bytes()[:cut])
    for tool in (dtl_cli, swin_cli):
        assert tool.main([str(src), str(tmp_path / 'out.pth')]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith(f'error: Cannot read checkpoint {src}: '), err
        assert len(err.splitlines()) == 1 and 'Traceback' not in err
        assert ('empty (0 bytes)' if cut == 0 else 'truncated') in err


def test_official_dtl_rejects_an_npz(tmp_path, capsys, dtl_cli):
    src = tmp_path / 'vit.npz'  # the wrong converter for this file
    np.savez(src, **make_google_npz())
    assert dtl_cli.main([str(src), str(tmp_path / 'out.pth')]) == 1
    assert str(src) in capsys.readouterr().err
    assert not (tmp_path / 'out.pth').exists()


# ------------------------------------------------------------------ writing
def test_save_is_atomic(tmp_path, monkeypatch):
    # The converters write through mmdtl.utils.save_checkpoint_atomic.
    dst = tmp_path / 'ckpt.pth'
    dst.write_bytes(b'previous checkpoint')

    def failing_save(obj, f):
        f.write(b'partial')
        raise RuntimeError('disk full')

    monkeypatch.setattr(torch, 'save', failing_save)
    with pytest.raises(RuntimeError, match='disk full'):
        save_checkpoint_atomic({'state_dict': {}}, str(dst))
    assert dst.read_bytes() == b'previous checkpoint'
    assert os.listdir(tmp_path) == ['ckpt.pth']  # no temporary file left behind
    monkeypatch.undo()

    save_checkpoint_atomic({'state_dict': {'w': torch.ones(2)}}, str(dst))
    assert torch.equal(torch.load(dst, weights_only=True)['state_dict']['w'], torch.ones(2))
    assert os.listdir(tmp_path) == ['ckpt.pth']
