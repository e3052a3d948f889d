"""What only a GPU can check: an AMP training step through mmengine's Runner,
half-stored frozen weights under CUDA autocast, the device prefix cache and
one-process NCCL DDP. Skipped without CUDA; ``tools/analysis/gpu_check.sh``
runs them.

``MMDTL_TEST_DEVICE=cpu`` runs the same checks, except the Runner's
``AmpOptimWrapper`` (CUDA only), on CPU with bf16 autocast and gloo: a dry
run of the tests' own logic on a machine without a GPU.
"""
import os

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner
from mmpretrain.registry import DATASETS, MODELS
from mmpretrain.structures import DataSample

import mmdtl  # noqa: F401

DEVICE = os.environ.get('MMDTL_TEST_DEVICE', 'cuda')
AMP_DTYPE = torch.float16 if DEVICE == 'cuda' else torch.bfloat16
HALF = 'float16' if DEVICE == 'cuda' else 'bfloat16'
pytestmark = pytest.mark.skipif(DEVICE == 'cuda' and not torch.cuda.is_available(),
                                reason='needs a CUDA GPU (tools/analysis/gpu_check.sh)')
ARCH = dict(embed_dims=128, num_layers=4, num_heads=2, feedforward_channels=256)


def backbone_cfg(**kwargs):
    return dict(type='DTLViT', arch=ARCH, img_size=32, patch_size=8, drop_path_rate=0.,
                csn=dict(type='CompactSideNetwork', rank=2, start=1, dwconv_kernel=3),
                **kwargs)


def build(**kwargs):
    torch.manual_seed(0)
    model = MODELS.build(backbone_cfg(**kwargs))
    for up in model.csn.up_projs.values():  # B starts at zero: make the CSN act
        torch.nn.init.normal_(up, std=0.5)
    return model.to(DEVICE).train()


def amp_step(model, images):
    model.zero_grad(set_to_none=True)
    with torch.autocast(DEVICE, dtype=AMP_DTYPE):
        out = model(images)[0]
    out.float().square().mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.csn.named_parameters()}


def math_attention():
    """Deterministic attention kernels: fused GPU attention backward may sum
    in a run-dependent order, which bit-identity checks cannot allow."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel(SDPBackend.MATH)


def test_half_stored_weights():
    fp32 = build()
    before = torch.cuda.memory_allocated() if DEVICE == 'cuda' else None
    half = build(frozen_weights_dtype=HALF)
    half.load_state_dict(fp32.state_dict())
    if DEVICE == 'cuda':
        # The frozen linears (almost every byte of the trunk) take half.
        fp32_bytes = sum(p.nbytes for p in fp32.parameters())
        assert torch.cuda.memory_allocated() - before < 0.6 * fp32_bytes
    images = torch.randn(4, 3, 32, 32, device=DEVICE)
    with math_attention():
        out_fp32, grads_fp32 = amp_step(fp32, images)
        out_half, grads_half = amp_step(half, images)
    assert torch.equal(out_fp32, out_half)
    for name, grad in grads_fp32.items():
        assert grad.abs().sum() > 0 and torch.equal(grad, grads_half[name]), name
    # Outside autocast: fp32 kernels on the weights cast up.
    with torch.no_grad():
        out = half.eval()(images)[0]
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_device_prefix_cache():
    images = torch.randn(3, 3, 32, 32, device=DEVICE)
    cached = build(prefix_cache=dict(storage='device'), frozen_weights_dtype=HALF)
    plain_half = build(frozen_weights_dtype=HALF)
    cache = cached.prefix_cache
    with math_attention():
        for _ in range(2):  # an epoch that fills the cache, one that reads it
            out_a, grads_a = amp_step(plain_half, images)
            out_b, grads_b = amp_step(cached, images)
            torch.testing.assert_close(out_a, out_b)
            for name in grads_a:
                torch.testing.assert_close(grads_a[name], grads_b[name], msg=name)
    assert (cache.misses, cache.hits) == (3, 3) and cache.nbytes > 0
    stored = [t for t in torch.utils._pytree.tree_leaves(list(cache._entries.values()))
              if torch.is_tensor(t)]
    assert stored and all(t.device.type == DEVICE for t in stored)
    # The fp32-stored trunk is another backbone: another store.
    other = build(prefix_cache=dict(storage='device'))
    assert other.prefix_cache.settings_key(other) != cache.settings_key(cached)
    amp_step(other, images)
    assert other.prefix_cache.hits == 0


def test_one_process_ddp(tmp_path):
    import torch.distributed as dist
    from mmengine.model import MMDistributedDataParallel
    from mmengine.optim import OptimWrapper

    backend = 'nccl' if DEVICE == 'cuda' else 'gloo'
    dist.init_process_group(backend, init_method=f'file://{tmp_path}/rendezvous', rank=0,
                            world_size=1)
    try:
        torch.manual_seed(0)
        model = MODELS.build(classifier_cfg()).to(DEVICE)
        frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
        assert any(p.dtype == AMP_DTYPE for p in frozen.values())
        wrapped = MMDistributedDataParallel(
            module=model, device_ids=[0] if DEVICE == 'cuda' else None)
        optim = OptimWrapper(torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=0.01))
        data = dict(inputs=[torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
                            for _ in range(4)],
                    data_samples=[DataSample().set_gt_label(i % 3) for i in range(4)])
        csn_before = model.backbone.csn.down_projs['0'].detach().clone()
        with torch.autocast(DEVICE, dtype=AMP_DTYPE):
            losses = wrapped.train_step(data, optim)
        assert torch.isfinite(losses['loss'])
        assert not torch.equal(csn_before, model.backbone.csn.down_projs['0'])
        for name, param in model.named_parameters():
            if name in frozen:
                assert param.grad is None and torch.equal(param, frozen[name]), name
    finally:
        dist.destroy_process_group()


def classifier_cfg(frozen_weights_dtype=HALF):
    return dict(type='ImageClassifier',
                data_preprocessor=dict(type='ClsDataPreprocessor', mean=[127.5] * 3,
                                       std=[127.5] * 3),
                backbone=backbone_cfg(frozen_weights_dtype=frozen_weights_dtype),
                head=dict(type='LinearClsHead', num_classes=3, in_channels=ARCH['embed_dims']))


@DATASETS.register_module(force=True)
class _CudaToyData(torch.utils.data.Dataset):
    metainfo = dict(classes=('a', 'b', 'c'))

    def __len__(self):
        return 8

    def __getitem__(self, index):
        image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8,
                              generator=torch.Generator().manual_seed(index))
        return dict(inputs=image, data_samples=DataSample().set_gt_label(index % 3))


@pytest.mark.skipif(DEVICE != 'cuda', reason="mmengine's AmpOptimWrapper needs CUDA")
@pytest.mark.parametrize('frozen_weights_dtype', [None, 'float16'])
def test_amp_training_step_with_the_runner(tmp_path, frozen_weights_dtype):
    runner = Runner.from_cfg(Config(dict(
        default_scope='mmpretrain', work_dir=str(tmp_path), log_level='WARNING',
        model=classifier_cfg(frozen_weights_dtype),
        train_dataloader=dict(batch_size=4, num_workers=0, dataset=dict(type='_CudaToyData'),
                              sampler=dict(type='DefaultSampler', shuffle=False)),
        train_cfg=dict(by_epoch=True, max_epochs=1),
        optim_wrapper=dict(type='AmpOptimWrapper', dtype='float16',
                           optimizer=dict(type='AdamW', lr=0.01)),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1)),
        randomness=dict(seed=0))))
    model = runner.model
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()
              if not p.requires_grad}
    csn = {n: p.detach().clone() for n, p in model.backbone.csn.named_parameters()}
    runner.train()
    assert next(model.parameters()).device.type == 'cuda'
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    assert any(not torch.equal(p, csn[n]) for n, p in model.backbone.csn.named_parameters())
    assert torch.isfinite(torch.tensor(runner.message_hub.get_scalar('train/loss').current()))
    saved = torch.load(tmp_path / 'epoch_1.pth', map_location='cpu', weights_only=False)
    expected = torch.float16 if frozen_weights_dtype else torch.float32
    assert saved['state_dict']['backbone.layers.0.attn.qkv.weight'].dtype == expected
