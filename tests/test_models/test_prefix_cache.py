"""The frozen-prefix feature cache: same logits and gradients, invalidation."""
import contextlib
import copy
import logging
import os
import time

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MessageHub, MMLogger
from mmengine.runner import Runner
from mmpretrain.registry import MODELS

import mmdtl  # noqa: F401
from mmdtl.models import prefix_cache as prefix_cache_module
from mmdtl.testing import csn_training_step as step
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


@pytest.mark.parametrize('random_pipeline,hook', [(False, True), (True, True), (True, False)])
def test_hook_in_a_real_run(tmp_path, repo_root, random_pipeline, hook):
    make_vtab_tree(str(tmp_path / 'data'), task='digits', num_classes=10,
                   sizes=dict(train800=6, val200=2, test=4), image_size=32)
    cfg = Config.fromfile(str(repo_root / 'configs/dtl/vit-demo_digits.py'))
    pipeline = [dict(type='LoadImageFromFile'),
                dict(type='Resize', scale=(32, 32), backend='pillow'),
                dict(type='PackInputs')]
    if random_pipeline and hook:
        pipeline.insert(2, dict(type='RandomFlip', prob=0.5))
    elif random_pipeline:  # a transform the hook does not know: caught by the reuse check
        pipeline.insert(1, dict(type='RandomResizedCrop', scale=32, crop_ratio_range=(0.5, 1.),
                                backend='pillow'))
    cfg.merge_from_dict({
        'work_dir': str(tmp_path / 'work'),
        'model.backbone.prefix_cache': dict(storage='memory'),
        'custom_hooks': [dict(type='PrefixCacheHook')] if hook else [],
        'train_dataloader.dataset.data_root': str(tmp_path / 'data'),
        'train_dataloader.dataset.pipeline': pipeline,
        'train_dataloader.batch_size': 4, 'train_dataloader.num_workers': 0,
        'train_dataloader.persistent_workers': False,
        'train_cfg.max_epochs': 2 if hook else 3, 'train_cfg.val_interval': 100,
        'default_hooks.checkpoint.interval': 100,
        'optim_wrapper.type': 'OptimWrapper',
    })
    for key in ('val_dataloader', 'val_evaluator', 'val_cfg', 'test_dataloader',
                'test_evaluator', 'test_cfg'):
        cfg[key] = None
    runner = Runner.from_cfg(cfg)
    with logged() as records:
        runner.train()
    cache = runner.model.backbone.prefix_cache
    if random_pipeline and hook:
        assert not cache.enabled and 'RandomFlip' in cache.disabled_reason
        assert cache.hits == cache.misses == 0
    elif random_pipeline:
        # Epoch 1 stored all 8 images, none of epoch 2's came back: off
        # after epoch 2, nothing held, epoch 3 ran without the cache.
        assert not cache.enabled and len(cache) == 0 and cache.nbytes == 0
        assert 'only 0 of the first 8 images of epoch 2 (0%) were cached' in \
            cache.disabled_reason
        assert (cache.misses, cache.hits) == (16, 0)
        assert any(r.levelno == logging.WARNING and 'Prefix cache disabled' in r.getMessage()
                   for r in records)
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
    (dict(out_indices=(0, 2)), r'out_indices \[0\] lie in the cached prefix.*csn.start=2'),
])
def test_swin_cache_refuses_a_prefix_it_cannot_reuse(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_swin(2, prefix_cache=dict(storage='memory'), **kwargs)


@contextlib.contextmanager
def logged():
    """The records mmengine's current logger emits inside the block."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


# -- every store is keyed by everything that decides an entry ----------------

def build_variant(cache_dir, arch=TINY, csn=None, cache=None, **kwargs):
    csn = dict(dict(type='CompactSideNetwork', rank=2, start=2, dwconv_kernel=3), **(csn or {}))
    torch.manual_seed(0)
    model = MODELS.build(dict(type='DTLViT', arch=arch, img_size=32, patch_size=8, csn=csn,
                              prefix_cache=dict(storage='disk', cache_dir=cache_dir,
                                                **(cache or {})), **kwargs))
    for up in model.csn.up_projs.values():
        torch.nn.init.normal_(up, std=0.3)
    return model.train()


def same_trunk(model, reference):
    """``model`` with the trunk tensors of ``reference`` (their CSNs may differ)."""
    model.load_state_dict({k: v for k, v in reference.state_dict().items()
                           if not k.startswith('csn.')}, strict=False)
    return model


IMAGES = torch.randn(2, 3, 32, 32)
AT_40 = torch.nn.functional.interpolate(IMAGES, size=(40, 40), mode='bilinear')


def variant(key, cache_dir, reference, monkeypatch):
    """A backbone (and its input) that differs from ``reference`` in ``key`` only."""
    if key == 'weights':
        model = build_variant(cache_dir)
        state = copy.deepcopy(reference.state_dict())
        state['layers.1.attn.qkv.weight'] += 0.1
        return model.load_state_dict(state) and model, IMAGES
    if key == 'version':
        monkeypatch.setattr(prefix_cache_module, 'PREFIX_CACHE_VERSION',
                            prefix_cache_module.PREFIX_CACHE_VERSION + 1)
    options = dict(
        start=dict(csn=dict(start=3)),
        taps=dict(csn=dict(taps=[0, 2, 3, 4, 5])),  # block 1's input is no longer stored
        num_heads=dict(arch=dict(TINY, num_heads=4)),
        interpolate_mode=dict(interpolate_mode='bilinear'),
        stored_dtype=dict(cache=dict(dtype='bfloat16')),
    ).get(key, {})
    model = same_trunk(build_variant(cache_dir, **options), reference)
    # At 40 px the 5 x 5 grid needs the resized position embedding.
    images = AT_40 if key in ('image_size', 'interpolate_mode') else IMAGES
    return model, images


@pytest.mark.parametrize('key', ['weights', 'start', 'taps', 'image_size', 'num_heads',
                                 'interpolate_mode', 'stored_dtype', 'autocast', 'version'])
def test_a_change_of_any_key_misses(key, tmp_path, monkeypatch):
    cache_dir = str(tmp_path)
    first = build_variant(cache_dir)
    step(first, IMAGES if key != 'interpolate_mode' else AT_40)
    assert (first.prefix_cache.misses, first.prefix_cache.hits) == (2, 0)
    again = build_variant(cache_dir)  # control: an identical backbone reuses the disk store
    step(again, IMAGES if key != 'interpolate_mode' else AT_40)
    assert (again.prefix_cache.misses, again.prefix_cache.hits) == (0, 2)

    other, images = variant(key, cache_dir, first, monkeypatch)
    autocast = torch.autocast('cpu', torch.bfloat16, enabled=key == 'autocast')
    with autocast:
        out = step(other, images)[0]
    assert (other.prefix_cache.misses, other.prefix_cache.hits) == (2, 0), key
    # What a stale hit would have hidden: the features of another prefix.
    plain, _ = variant(key, cache_dir, first, monkeypatch)
    plain.prefix_cache = None
    with autocast:
        torch.testing.assert_close(out, step(plain, images)[0])
    folders = os.listdir(cache_dir)
    if key == 'image_size':  # the image hash: two more entries of the same store
        assert len(folders) == 1 and len(os.listdir(os.path.join(cache_dir, folders[0]))) == 4
    else:
        assert len(folders) == 2  # one folder per settings key


@pytest.mark.parametrize('damage', ['truncated', 'empty', 'foreign'])
def test_unreadable_disk_entry_is_recomputed_with_one_line(damage, tmp_path):
    cache_dir = str(tmp_path)
    model = build_variant(cache_dir)
    expected = step(model, IMAGES)[0]
    folder = os.path.join(cache_dir, os.listdir(cache_dir)[0])
    path = os.path.join(folder, sorted(os.listdir(folder))[0])
    with open(path, 'rb') as f:
        content = f.read()
    if damage == 'foreign':
        torch.save(dict(state_dict=dict(w=torch.zeros(2))), path)
    else:
        with open(path, 'wb') as f:
            f.write(content[:len(content) // 2] if damage == 'truncated' else b'')
    fresh = build_variant(cache_dir)
    with logged() as records:
        torch.testing.assert_close(step(fresh, IMAGES)[0], expected)
    assert (fresh.prefix_cache.misses, fresh.prefix_cache.hits) == (1, 1)
    warnings = [r.getMessage() for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and '\n' not in warnings[0]
    assert warnings[0].startswith(f'prefix cache: {path} is unreadable (')
    assert warnings[0].endswith('it is deleted and recomputed')
    assert dict(truncated=f'({len(content) // 2} bytes, truncated or not written by '
                          'torch.save: ', empty='(empty file)',
                foreign='(not a prefix-cache entry)')[damage] in warnings[0]
    # Rewritten: the next run hits both.
    last = build_variant(cache_dir)
    step(last, IMAGES)
    assert (last.prefix_cache.misses, last.prefix_cache.hits) == (0, 2)


def test_stale_tmp_files_are_removed_at_the_next_start(tmp_path):
    folder = tmp_path / 'abc'
    folder.mkdir()
    stale = folder / f'.{"0" * 40}.pt.4242.deadbeef.tmp'  # an interrupted save's name
    live = folder / f'.{"1" * 40}.pt.4243.cafecafe.tmp'  # a save in progress elsewhere
    entry = folder / f'{"2" * 40}.pt'
    for path in (stale, live, entry):
        path.write_bytes(b'partial')
    old = time.time() - 2 * prefix_cache_module.STALE_TMP_SECONDS
    os.utime(stale, (old, old))
    os.utime(entry, (old, old))
    build_variant(str(tmp_path))
    assert not stale.exists() and live.exists() and entry.exists()


@pytest.mark.parametrize('kind,disabled', [('same', False), ('flip', False),
                                           ('bounded', False), ('random', True)])
def test_reuse_check_rule(kind, disabled):
    """Epoch 2 of a random pipeline hits nothing: the cache stops itself; a
    flip (half the images come back) or a max_items bound do not trigger it."""
    hub = MessageHub.get_instance(f'test_reuse_check_rule_{kind}')
    model = build(prefix_cache=dict(storage='memory', max_items=2 if kind == 'bounded' else None))
    images = torch.randn(8, 3, 32, 32)
    torch.manual_seed(1)
    for epoch in range(3):
        hub.update_info('epoch', epoch)
        for batch in images.split(4):
            if kind == 'flip':
                flip = torch.rand(len(batch)) < 0.5
                batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
            elif kind == 'random':
                batch = batch + 0.01 * torch.randn_like(batch)
            model(batch)
    cache = model.prefix_cache
    assert cache.enabled is not disabled
    if disabled:
        assert len(cache) == 0 and (cache.misses, cache.hits) == (16, 0)
    elif kind == 'same':
        assert (cache.misses, cache.hits) == (8, 16)
    elif kind == 'bounded':  # 2 of 8 images held
        assert (cache.misses, cache.hits, len(cache)) == (20, 4, 2)
