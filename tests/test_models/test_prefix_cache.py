"""The frozen-prefix feature cache: same logits and gradients, invalidation."""
import copy

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner
from mmpretrain.registry import MODELS

import mmdtl  # noqa: F401
from mmdtl.testing import make_vtab_tree

TINY = dict(embed_dims=32, num_layers=6, num_heads=2, feedforward_channels=64)


def build(prefix_cache=None, **kwargs):
    torch.manual_seed(0)
    model = MODELS.build(dict(
        type='DTLViT', arch=TINY, img_size=32, patch_size=8, prefix_cache=prefix_cache,
        csn=dict(type='CompactSideNetwork', rank=2, start=2, dwconv_kernel=3), **kwargs))
    for up in model.csn.up_projs.values():
        torch.nn.init.normal_(up, std=0.3)
    return model.train()


def step(model, images):
    out = model(images)[0]
    model.zero_grad()
    (out ** 2).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.csn.named_parameters()}


@pytest.mark.parametrize('storage', ['memory', 'device', 'disk'])
def test_cached_steps_match_uncached(storage, tmp_path):
    images = torch.randn(3, 3, 32, 32)
    plain = build()
    cached = build(prefix_cache=dict(storage=storage, cache_dir=str(tmp_path)))
    cache = cached.prefix_cache
    for epoch in range(2):
        out_a, grads_a = step(plain, images)
        out_b, grads_b = step(cached, images)
        torch.testing.assert_close(out_a, out_b)
        for name in grads_a:
            torch.testing.assert_close(grads_a[name], grads_b[name], msg=name)
    assert (cache.misses, cache.hits, len(cache)) == (3, 3, 3)
    # Per image: the inputs of the tapped blocks 0..M and block M's output,
    # 17 tokens x 32 dims in fp32 each; nothing in memory for the disk store.
    tensors = len([t for t in cached.csn.taps if t <= 2]) + 1
    assert cache.nbytes == (0 if storage == 'disk' else 3 * tensors * 17 * 32 * 4)
    # A batch mixing cached and new images.
    mixed = torch.cat([images[:1], torch.randn(2, 3, 32, 32)])
    torch.testing.assert_close(step(plain, mixed)[0], step(cached, mixed)[0])
    assert (cache.misses, cache.hits) == (5, 4)


def test_new_backbone_weights_invalidate_the_cache(tmp_path):
    images = torch.randn(2, 3, 32, 32)
    for storage in ('memory', 'disk'):
        model = build(prefix_cache=dict(storage=storage, cache_dir=str(tmp_path)))
        step(model, images)
        state = copy.deepcopy(model.state_dict())
        state['layers.0.ffn.layers.1.weight'] += 1.
        model.load_state_dict(state)
        misses = model.prefix_cache.misses
        out = step(model, images)[0]
        assert model.prefix_cache.misses == misses + 2, storage
        fresh = build()
        fresh.load_state_dict(state)
        torch.testing.assert_close(out, step(fresh, images)[0])


def test_augmented_images_never_hit_and_eval_bypasses():
    model = build(prefix_cache=dict(storage='memory'))
    images = torch.randn(2, 3, 32, 32)
    step(model, images)
    step(model, images.flip(-1))  # what a random flip would produce
    assert model.prefix_cache.hits == 0
    model.eval()
    with torch.no_grad():
        model(images)
    assert model.prefix_cache.misses == 4 and model.prefix_cache.hits == 0


@pytest.mark.parametrize('kwargs,match', [
    (dict(drop_path_rate=0.1), r'prefix_cache needs a deterministic prefix.*drop_path_rate=0'),
    (dict(out_indices=(1, 5)), r'out_indices \[1\] lie in the cached prefix'),
])
def test_cache_refuses_a_prefix_it_cannot_reuse(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build(prefix_cache=dict(storage='memory'), **kwargs)
    with pytest.raises(ValueError, match=r"prefix_cache.storage must be one of"):
        build(prefix_cache=dict(storage='gpu'))
    with pytest.raises(ValueError, match=r"cache_dir is required"):
        build(prefix_cache=dict(storage='disk'))


@pytest.mark.parametrize('random_pipeline', [False, True])
def test_hook_in_a_real_run(tmp_path, repo_root, random_pipeline):
    make_vtab_tree(str(tmp_path / 'data'), task='digits', num_classes=10,
                   sizes=dict(train800=6, val200=2, test=4), image_size=32)
    cfg = Config.fromfile(str(repo_root / 'configs/dtl/vit-demo_digits.py'))
    pipeline = [dict(type='LoadImageFromFile'),
                dict(type='Resize', scale=(32, 32), backend='pillow'),
                dict(type='PackInputs')]
    if random_pipeline:
        pipeline.insert(2, dict(type='RandomFlip', prob=0.5))
    cfg.merge_from_dict({
        'work_dir': str(tmp_path / 'work'),
        'model.backbone.prefix_cache': dict(storage='memory'),
        'custom_hooks': [dict(type='PrefixCacheHook')],
        'train_dataloader.dataset.data_root': str(tmp_path / 'data'),
        'train_dataloader.dataset.pipeline': pipeline,
        'train_dataloader.batch_size': 4, 'train_dataloader.num_workers': 0,
        'train_dataloader.persistent_workers': False,
        'train_cfg.max_epochs': 2, 'train_cfg.val_interval': 100,
        'default_hooks.checkpoint.interval': 100,
        'optim_wrapper.type': 'OptimWrapper',
    })
    for key in ('val_dataloader', 'val_evaluator', 'val_cfg', 'test_dataloader',
                'test_evaluator', 'test_cfg'):
        cfg[key] = None
    runner = Runner.from_cfg(cfg)
    runner.train()
    cache = runner.model.backbone.prefix_cache
    if random_pipeline:
        assert not cache.enabled and 'RandomFlip' in cache.disabled_reason
        assert cache.hits == cache.misses == 0
    else:
        assert cache.enabled and len(cache) == 8
        assert cache.misses == 8 and cache.hits == 8  # second epoch: all hits


SWIN = dict(type='DTLSwin', arch=dict(embed_dims=16, depths=[2, 2, 2], num_heads=[1, 2, 2]),
            img_size=32, window_size=2, out_indices=(2, ), drop_path_rate=0.)


def build_swin(start, prefix_cache=None, **kwargs):
    torch.manual_seed(0)
    model = MODELS.build(dict(SWIN, prefix_cache=prefix_cache, **kwargs, csn=dict(
        type='CompactSideNetwork', rank=2, start=start, dwconv_kernel=3)))
    for up in model.csn.up_projs.values():
        torch.nn.init.normal_(up, std=0.3)
    return model.train()


@pytest.mark.parametrize('start', [1, 2, 3, 4])  # M at the end and start of stages
def test_swin_cached_steps_match_uncached(start):
    images = torch.randn(3, 3, 32, 32)
    plain = build_swin(start)
    cached = build_swin(start, prefix_cache=dict(storage='memory'))
    calls = []
    blocks = [b for stage in cached.stages for b in stage.blocks]
    for i, block in enumerate(blocks):
        block.register_forward_hook(lambda m, args, out, i=i: calls.append(i))
    for epoch in range(2):
        calls.clear()
        out_a, grads_a = step(plain, images)
        out_b, grads_b = step(cached, images)
        torch.testing.assert_close(out_a, out_b)
        assert grads_a.keys() == grads_b.keys() and len(grads_a) > 2
        for name in grads_a:
            torch.testing.assert_close(grads_a[name], grads_b[name], msg=name)
    # The second epoch ran only the blocks after M.
    assert calls == list(range(start + 1, len(blocks)))
    assert (cached.prefix_cache.misses, cached.prefix_cache.hits) == (3, 3)


@pytest.mark.parametrize('kwargs,match', [
    (dict(drop_path_rate=0.1), r'blocks \[1, 2\] \(<= csn.start=2\) use drop path'),
    (dict(out_indices=(0, 2)), r'stages \[0\] of out_indices end before block csn.start=2'),
])
def test_swin_cache_refuses_a_prefix_it_cannot_reuse(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_swin(2, prefix_cache=dict(storage='memory'), **kwargs)
