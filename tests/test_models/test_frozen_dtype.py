"""frozen_weights_dtype: half-stored frozen weights are bit-identical under
autocast, exact rounded-weight models in fp32, and keep checkpoints, resume
and task files working."""
import copy
import pickle

import pytest
import torch
from mmengine.config import Config
from mmengine.runner import Runner
from mmpretrain.registry import DATASETS, MODELS
from mmpretrain.structures import DataSample

import mmdtl  # noqa: F401
from mmdtl.engine import (
    BackboneMismatchError,
    backbone_fingerprint,
    load_task_checkpoint,
    save_task_checkpoint,
)
from mmdtl.models.frozen_dtype import HalfStoredMixin

VIT = dict(type='DTLViT', img_size=32, patch_size=8,
           arch=dict(embed_dims=32, num_layers=4, num_heads=2, feedforward_channels=64),
           csn=dict(type='CompactSideNetwork', rank=2, start=1, dwconv_kernel=3))
SWIN = dict(type='DTLSwin', img_size=64, window_size=4, pad_small_map=True, drop_path_rate=0.,
            arch=dict(embed_dims=16, depths=[2, 2, 2, 2], num_heads=[1, 2, 2, 4]),
            csn=dict(type='CompactSideNetwork', rank=2, start=3, dwconv_kernel=3))


def build(cfg, **kwargs):
    torch.manual_seed(0)
    model = MODELS.build({**cfg, **kwargs})
    for name, param in model.named_parameters():
        # Random tables and a non-zero B (both start at zero), so that every
        # part of the computation shows in the output.
        if name.endswith('relative_position_bias_table') or name.startswith('csn.up_projs'):
            torch.nn.init.normal_(param, std=0.5)
    return model


def half_copy(fp32_model, cfg, dtype='bfloat16'):
    model = build(cfg, frozen_weights_dtype=dtype)
    model.load_state_dict(fp32_model.state_dict())  # rounds, as autocast does
    return model


def amp_step(model, images, dtype):
    with torch.autocast('cpu', dtype=dtype):
        out = model(images)[-1]
    # fp16 AMP scales the loss (GradScaler): unscaled, the side network's
    # fp16 gradients underflow to zero here.
    scale = 2.**16 if dtype == torch.float16 else 1.
    (out.float().square().mean() * scale).backward()
    return out, {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize('cfg,size,dtype', [(VIT, 32, 'bfloat16'), (VIT, 32, 'float16'),
                                            (SWIN, 64, 'bfloat16')])
def test_bit_identical_under_autocast(cfg, size, dtype):
    fp32 = build(cfg)
    half = half_copy(fp32, cfg, dtype)
    images = torch.randn(2, 3, size, size)
    out_fp32, grads_fp32 = amp_step(fp32, images, getattr(torch, dtype))
    out_half, grads_half = amp_step(half, images, getattr(torch, dtype))
    assert torch.equal(out_fp32, out_half)
    assert list(grads_fp32) == list(grads_half) and all(n.startswith('csn.') for n in grads_half)
    for name in grads_fp32:
        assert grads_fp32[name].abs().sum() > 0, name
        assert torch.equal(grads_fp32[name], grads_half[name]), name


def test_fp32_eval_is_the_rounded_weight_model():
    fp32 = build(VIT).eval()
    half = half_copy(fp32, VIT).eval()
    rounded = copy.deepcopy(fp32)
    with torch.no_grad():
        for name, module in rounded.named_modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and 'csn' not in name:
                for param in module.parameters():
                    param.copy_(param.bfloat16().float())
        images = torch.randn(2, 3, 32, 32)
        out = half(images)[0]
        assert out.dtype == torch.float32
        assert torch.equal(out, rounded(images)[0])
        # An approximation of the fp32-stored model, within bf16 rounding.
        assert not torch.equal(out, fp32(images)[0])
        torch.testing.assert_close(out, fp32(images)[0], rtol=0.05, atol=0.05)


def test_what_is_stored_in_half():
    model = build(VIT, frozen_weights_dtype='bfloat16')
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    half = {n for n, d in dtypes.items() if d == torch.bfloat16}
    assert half == {n for n, m in model.named_modules() if isinstance(m, HalfStoredMixin)
                    for n in (f'{n}.weight', f'{n}.bias')}
    assert 'patch_embed.projection.weight' in half and 'layers.3.ffn.layers.1.bias' in half
    for name in ('pos_embed', 'cls_token', 'layers.0.ln1.weight', 'ln2.bias'):
        assert dtypes[name] == torch.float32, name
    assert all(d == torch.float32 for n, d in dtypes.items() if n.startswith('csn.'))
    assert all(model.state_dict()[n].dtype == torch.bfloat16 for n in half)
    linear = model.layers[0].attn.qkv
    assert isinstance(linear, torch.nn.Linear) and type(linear).__name__ == 'HalfStoredLinear'
    # Pickling and deep copies keep the half-stored classes.
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = model(images)[0]
        for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
            assert type(clone.layers[0].attn.qkv) is type(linear)
            assert torch.equal(clone(images)[0], expected)


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match=r"frozen_weights_dtype='int8'.*bfloat16"):
        build(VIT, frozen_weights_dtype='int8')
    with pytest.raises(ValueError, match='freeze_backbone=False.*needs freeze_backbone=True'):
        build(VIT, frozen_weights_dtype='bfloat16', freeze_backbone=False)
    with pytest.raises(ValueError, match='dtype=.*pack_frozen_weights=True.*one of them'):
        build(SWIN, frozen_weights_dtype='float16', pack_frozen_weights=True)


def classifier(**backbone):
    return dict(type='ImageClassifier',
                data_preprocessor=dict(type='ClsDataPreprocessor', mean=[127.5] * 3,
                                       std=[127.5] * 3),
                backbone={**VIT, **backbone},
                head=dict(type='LinearClsHead', num_classes=3, in_channels=32))


def test_fingerprints_and_task_files(tmp_path):
    torch.manual_seed(0)
    fp32 = MODELS.build(classifier())
    pretrained = {k: v for k, v in fp32.backbone.state_dict().items()
                  if not k.startswith('csn.')}
    half, other_half = (MODELS.build(classifier(frozen_weights_dtype='bfloat16'))
                        for _ in range(2))
    for model in (half, other_half):  # an fp32 pre-trained checkpoint, loaded twice
        model.backbone.load_state_dict(pretrained, strict=False)
    torch.nn.init.normal_(half.backbone.csn.up_projs['2'], std=0.5)
    # The fingerprint hashes the backbone as stored: the half trunk is
    # another backbone than its fp32 original, the same for every copy.
    assert backbone_fingerprint(half) == backbone_fingerprint(other_half)
    assert backbone_fingerprint(half) != backbone_fingerprint(fp32)

    path = str(tmp_path / 'task.pth')
    save_task_checkpoint(half, path)
    with pytest.raises(BackboneMismatchError, match='belongs to another backbone'):
        load_task_checkpoint(fp32, path)
    load_task_checkpoint(other_half, path)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        assert torch.equal(other_half(images), half.eval()(images))


@DATASETS.register_module(force=True)
class _HalfStoredToyData(torch.utils.data.Dataset):
    metainfo = dict(classes=('a', 'b', 'c'))

    def __len__(self):
        return 4

    def __getitem__(self, index):
        image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8,
                              generator=torch.Generator().manual_seed(index))
        return dict(inputs=image, data_samples=DataSample().set_gt_label(index % 3))


def runner(work_dir, max_epochs, **kwargs):
    cfg = Config(dict(
        default_scope='mmpretrain', work_dir=str(work_dir), log_level='WARNING',
        model=classifier(frozen_weights_dtype='bfloat16'),
        train_dataloader=dict(batch_size=2, num_workers=0, dataset=dict(type='_HalfStoredToyData'),
                              sampler=dict(type='DefaultSampler', shuffle=False)),
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=0.01)),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1)),
        randomness=dict(seed=0), **kwargs))
    return Runner.from_cfg(cfg)


def test_checkpoint_load_from_and_resume(tmp_path):
    first = runner(tmp_path / 'a', 2)
    first.train()
    ckpt = torch.load(tmp_path / 'a' / 'epoch_1.pth', map_location='cpu', weights_only=False)
    state = ckpt['state_dict']
    assert state['backbone.layers.0.attn.qkv.weight'].dtype == torch.bfloat16
    assert state['backbone.csn.down_projs.0'].dtype == torch.float32

    resumed = runner(tmp_path / 'b', 2, load_from=str(tmp_path / 'a' / 'epoch_1.pth'),
                     resume=True)
    resumed.train()
    final = {k: v for k, v in first.model.state_dict().items()}
    again = resumed.model.state_dict()
    assert all(torch.equal(final[k], again[k]) for k in final)
    assert not torch.equal(final['backbone.csn.down_projs.0'],
                           state['backbone.csn.down_projs.0'])  # it did train

    # load_from an fp32 checkpoint: rounded once into the stored dtype.
    fp32_ckpt = {'state_dict': {k: v.float() if v.is_floating_point() else v
                                for k, v in state.items()}}
    torch.save(fp32_ckpt, tmp_path / 'fp32.pth')
    loaded = runner(tmp_path / 'c', 1, load_from=str(tmp_path / 'fp32.pth'))
    loaded.load_or_resume()
    weight = loaded.model.backbone.layers[0].attn.qkv.weight
    assert weight.dtype == torch.bfloat16
    assert torch.equal(weight, state['backbone.layers.0.attn.qkv.weight'])


def test_multitask_serving_on_a_half_stored_trunk(tmp_path):
    from mmdtl.models.multitask import MultiTaskDTL

    half_cfg = {**VIT, 'frozen_weights_dtype': 'bfloat16'}
    torch.manual_seed(0)
    trunk = {k: v for k, v in MODELS.build(classifier()).backbone.state_dict().items()
             if not k.startswith('csn.')}  # an fp32 pre-trained trunk
    torch.save(trunk, tmp_path / 'trunk.pth')
    singles, paths = [], []
    for start in (1, 2):
        model = MODELS.build(classifier(frozen_weights_dtype='bfloat16',
                                        csn={**VIT['csn'], 'start': start})).eval()
        model.backbone.load_state_dict(trunk, strict=False)
        for param in model.backbone.csn.parameters():
            torch.nn.init.normal_(param, std=0.3)
        paths.append(str(tmp_path / f'task{start}.pth'))
        save_task_checkpoint(model, paths[-1])
        singles.append(model)
    served = MultiTaskDTL(backbone=half_cfg, tasks=paths,
                          backbone_checkpoint=str(tmp_path / 'trunk.pth'))
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
        outputs = served(images)
        for name, single in zip(served.task_names, singles):
            assert torch.equal(outputs[name], single(images)), name
    with pytest.raises(BackboneMismatchError):  # an fp32-stored trunk is another one
        MultiTaskDTL(backbone=VIT, tasks=paths, backbone_checkpoint=str(tmp_path / 'trunk.pth'))


def test_the_option_reads_back_as_configured():
    assert build(VIT).frozen_weights_dtype is None
    assert build(VIT, frozen_weights_dtype=torch.float16).frozen_weights_dtype == 'float16'
    assert build(SWIN, frozen_weights_dtype='bfloat16').frozen_weights_dtype == 'bfloat16'
