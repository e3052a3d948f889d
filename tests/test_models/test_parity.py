"""Parity with the parent backbones: inputs that are not a multiple of the
patch size (ViT), and Swin checkpoints loaded into another window size."""
import numpy as np
import pytest
import torch
from mmpretrain.registry import MODELS

import mmdtl  # noqa: F401  (registers DTLViT/DTLSwin, patches the table resize)
from mmdtl.engine import save_task_checkpoint
from mmdtl.models import MultiTaskDTL
from mmdtl.models.utils.rel_pos_resize import (
    beit_rel_pos_grids,
    not_a_knot_cubic_matrix,
    resize_relative_position_bias_table,
)
from mmdtl.testing import csn_training_step as step

TINY = dict(embed_dims=16, num_layers=4, num_heads=2, feedforward_channels=32)
VIT = dict(arch=TINY, img_size=16, patch_size=4)
ODD = (2, 3, 18, 14)  # neither side a multiple of the patch size 4: grid 5 x 4


def parent_and_dtl(out_type='avg_featmap', final_norm=False, out_indices=-1, **dtl_kwargs):
    torch.manual_seed(0)
    parent = MODELS.build(dict(type='VisionTransformer', **VIT, out_type=out_type,
                               final_norm=final_norm, out_indices=out_indices))
    torch.nn.init.normal_(parent.pos_embed, std=0.2)  # not the all-zero start
    torch.nn.init.normal_(parent.cls_token, std=0.2)
    dtl = MODELS.build(dict(type='DTLViT', **VIT, out_type=out_type, final_norm=final_norm,
                            out_indices=out_indices, **dtl_kwargs))
    missing, unexpected = dtl.load_state_dict(parent.state_dict(), strict=False)
    assert not unexpected and all(k.startswith('csn.') for k in missing)
    parent.eval()  # mmpretrain's train() returns None
    return parent, dtl.eval()


@pytest.mark.parametrize('out_type,final_norm,out_indices', [
    ('avg_featmap', False, -1), ('featmap', True, (1, 3)), ('raw', False, (2, )),
    ('cls_token', True, -1)])
def test_vit_pads_as_the_parent_with_a_fresh_csn(out_type, final_norm, out_indices):
    parent, dtl = parent_and_dtl(out_type, final_norm, out_indices, csn=dict(
        type='CompactSideNetwork', rank=2, start=1, dwconv_kernel=3))
    images = torch.randn(*ODD)
    with torch.no_grad():
        expected, got = parent(images), dtl(images)
    assert len(expected) == len(got) >= 1
    for e, g in zip(expected, got):
        if out_type == 'featmap':
            assert e.shape == (2, 16, 5, 4)  # the padded grid
        assert torch.equal(e, g)  # a fresh CSN adds exact zeros


def train_csn(model):
    torch.manual_seed(1)
    for up in model.csn.up_projs.values():
        torch.nn.init.normal_(up, std=0.3)
    return model.train()


def test_vit_trained_csn_on_the_padded_grid_all_paths_agree():
    csn = dict(type='CompactSideNetwork', rank=2, start=1, dwconv_kernel=3)
    parent, plain = parent_and_dtl(csn=csn)
    train_csn(plain)
    variants = dict(plain=plain,
                    cache=parent_and_dtl(csn=csn, prefix_cache=dict(storage='memory'))[1],
                    checkpointed=parent_and_dtl(csn=csn, checkpoint_suffix=True)[1])
    for model in variants.values():
        model.csn.load_state_dict(plain.csn.state_dict())
        model.train()
    shapes = []
    plain.csn.dwconvs['0'].register_forward_pre_hook(
        lambda m, args: shapes.append(tuple(args[0].shape)))
    images = torch.randn(*ODD)
    for epoch in range(2):  # the second epoch reads the prefix from the cache
        out, grads = step(plain, images)
        for name in ('cache', 'checkpointed'):
            out_v, grads_v = step(variants[name], images)
            torch.testing.assert_close(out_v, out, msg=name)
            for key in grads:
                torch.testing.assert_close(grads_v[key], grads[key], msg=f'{name} {key}')
    assert variants['cache'].prefix_cache.hits == 2
    # The DWConv ran on the padded 5 x 4 grid after every add-back block
    # (1..3), in forward and again in backward (side output recomputed).
    assert set(shapes) == {(2, 16, 5, 4)} and len(shapes) == 2 * 3 * 2
    # And the trained side network changes the output of the parent.
    with torch.no_grad():
        assert not torch.allclose(parent(images)[0], plain.eval()(images)[0], atol=1e-3)


def test_multitask_pads_as_the_single_task_model(tmp_path):
    csn = dict(type='CompactSideNetwork', rank=2, start=1, dwconv_kernel=3)
    parent, backbone = parent_and_dtl(csn=csn)
    backbone_file = str(tmp_path / 'backbone.pth')
    torch.save(dict(state_dict=parent.state_dict()), backbone_file)
    model = MODELS.build(dict(type='ImageClassifier', backbone=dict(type='DTLViT', **VIT, csn=csn),
                              head=dict(type='LinearClsHead', num_classes=3, in_channels=16)))
    model.backbone.load_state_dict(parent.state_dict(), strict=False)
    train_csn(model.backbone)
    model.eval()
    task_file = str(tmp_path / 'task.pth')
    save_task_checkpoint(model, task_file, backbone_checkpoint=backbone_file)
    multi = MultiTaskDTL(dict(type='DTLViT', **VIT, csn=dict(type='CompactSideNetwork')),
                         {'a': task_file}, backbone_checkpoint=backbone_file)
    images = torch.randn(*ODD)
    with torch.no_grad():
        torch.testing.assert_close(multi(images)['a'], model(images, mode='tensor'))


# -- Swin: relative position tables of a window-7 checkpoint at window 12 ------

SWIN_ARCH = dict(embed_dims=16, depths=[2, 2], num_heads=[1, 2])


def test_table_resize_is_the_interpolating_bicubic_spline():
    """The reference is SciPy's own replacement for ``interp2d`` on a grid
    (interp2d transition guide: ``RectBivariateSpline(x, y, z.T, kx=3, ky=3,
    s=0)(xnew, ynew).T``, the same FITPACK routines), and per axis the
    not-a-knot cubic spline of ``make_interp_spline``."""
    from scipy.interpolate import RectBivariateSpline, make_interp_spline
    torch.manual_seed(0)
    for src_window, dst_window, heads in ((7, 12, 3), (12, 7, 2), (3, 5, 1)):
        src, dst = 2 * src_window - 1, 2 * dst_window - 1
        table = torch.randn(src * src, heads)
        ours = resize_relative_position_bias_table(src, dst, table, heads)
        assert ours.shape == (dst * dst, heads) and ours.dtype == torch.float32
        x, xnew = beit_rel_pos_grids(src, dst)
        for h in range(heads):
            z = table[:, h].view(src, src).numpy()
            expected = RectBivariateSpline(x, x, z.T, kx=3, ky=3, s=0)(xnew, xnew).T
            torch.testing.assert_close(ours[:, h].view(dst, dst).double(),
                                       torch.from_numpy(expected), rtol=1e-6, atol=1e-6)
        # One axis: the not-a-knot spline, points beyond the nodes clamped.
        y = np.random.default_rng(src).normal(size=src)
        clamped = np.clip(xnew, x[0], x[-1])
        torch.testing.assert_close(
            not_a_knot_cubic_matrix(x, xnew) @ torch.from_numpy(y),
            torch.from_numpy(make_interp_spline(x, y, k=3)(clamped)))


@pytest.mark.parametrize('backbone', ['SwinTransformer', 'DTLSwin'])
def test_swin_window7_checkpoint_fine_tunes_at_384_window12(backbone, tmp_path):
    torch.manual_seed(0)
    source = MODELS.build(dict(type='SwinTransformer', arch=SWIN_ARCH, img_size=224,
                               window_size=7, out_indices=(1, )))
    for name, param in source.named_parameters():
        if 'relative_position_bias_table' in name:
            torch.nn.init.normal_(param, std=1.)
    state = source.state_dict()
    ckpt = str(tmp_path / 'swin_w7.pth')
    torch.save(dict(state_dict=state), ckpt)
    model = MODELS.build(dict(type=backbone, arch=SWIN_ARCH, img_size=384, window_size=12,
                              out_indices=(1, ), drop_path_rate=0.,
                              init_cfg=dict(type='Pretrained', checkpoint=ckpt)))
    model.init_weights()  # the fine-tuning path: Pretrained init_cfg
    tables = {n: p for n, p in model.state_dict().items() if 'bias_table' in n}
    assert len(tables) == 4
    for name, table in tables.items():
        heads = table.shape[1]
        assert table.shape == (23 * 23, heads)
        torch.testing.assert_close(
            table, resize_relative_position_bias_table(13, 23, state[name], heads))
    # Everything else loaded as is; the index buffers are rebuilt for window 12.
    for name, value in model.state_dict().items():
        if name in state and 'relative_position' not in name:
            assert torch.equal(value, state[name]), name
    with torch.no_grad():
        model.eval()
        out = model(torch.randn(1, 3, 384, 384))
    assert out[0].shape == (1, 32, 48, 48) and torch.isfinite(out[0]).all()
    if backbone == 'DTLSwin':  # a fresh CSN: the parent's output
        parent = MODELS.build(dict(type='SwinTransformer', arch=SWIN_ARCH, img_size=384,
                                   window_size=12, out_indices=(1, )))
        parent.load_state_dict(model.state_dict(), strict=False)
        images = torch.randn(1, 3, 384, 384)
        parent.eval()
        with torch.no_grad():
            assert torch.equal(parent(images)[0], model(images)[0])
