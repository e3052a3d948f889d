"""Memory options of the ViT detector: results-preserving, on by default,
reported by detection_memory.py; and the out_indices/neck check.

Every option (SimpleFPN ``with_cp``, the ``Checkpoint*Head`` classes, the
backbone's ``checkpoint_suffix``) must give the same outputs and gradients as
the plain run, in train mode, while saving fewer bytes for backward.
"""
import copy
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope, init_default_scope

pytest.importorskip('mmdet')
import mmdet.models  # noqa: F401,E402  (registers mmdet's modules)

import mmdtl  # noqa: F401,E402
from mmdtl.analysis import detection_memory as tool  # noqa: E402
from mmdtl.utils import SavedTensorMeter  # noqa: E402
from mmdtl.utils.config_checks import (  # noqa: E402
    check_backbone_reaches_neck,
    check_neck_inputs,
)

REPO = Path(__file__).resolve().parents[2]
VIT = REPO / 'configs/mmdet/mask-rcnn_dtl+-vit-b_simplefpn_1x_coco.py'
SWIN_T = REPO / 'configs/mmdet/mask-rcnn_dtl+-swin-t-p4-w7_fpn_1x_coco.py'
LN2D = dict(type='mmpretrain.LN2d', requires_grad=True)

# The ViT Mask R-CNN shrunk by config overrides only: 4 blocks of 32 dims,
# 16-channel pyramid and heads, few RoIs.
TINY_VIT = {
    'model.backbone.arch._delete_': True,
    'model.backbone.arch.embed_dims': 32,
    'model.backbone.arch.num_layers': 4,
    'model.backbone.arch.num_heads': 2,
    'model.backbone.arch.feedforward_channels': 64,
    'model.backbone.img_size': 64,
    'model.backbone.csn.taps': [0, 1, 2, 3],
    'model.backbone.csn.start': 1,
    'model.neck.backbone_channel': 32,
    'model.neck.in_channels': [8, 16, 32, 32],
    'model.neck.out_channels': 16,
    'model.rpn_head.in_channels': 16,
    'model.rpn_head.feat_channels': 16,
    'model.roi_head.bbox_roi_extractor.out_channels': 16,
    'model.roi_head.bbox_head.in_channels': 16,
    'model.roi_head.bbox_head.conv_out_channels': 16,
    'model.roi_head.bbox_head.fc_out_channels': 32,
    'model.roi_head.mask_roi_extractor.out_channels': 16,
    'model.roi_head.mask_head.in_channels': 16,
    'model.roi_head.mask_head.conv_out_channels': 16,
    'model.train_cfg.rpn_proposal.nms_pre': 200,
    'model.train_cfg.rpn_proposal.max_per_img': 64,
    'model.train_cfg.rcnn.sampler.num': 32,
}
# Every memory option of the config, off.
OPTIONS_OFF = {
    'model.backbone.checkpoint_suffix': False,
    'model.neck.with_cp': False,
    'model.rpn_head.with_cp': False,
    'model.roi_head.bbox_head.with_cp': False,
    'model.roi_head.mask_head.with_cp': False,
}


def build(cfg_dict: dict, seed: int = 0):
    from mmdet.registry import MODELS

    init_default_scope('mmdet')
    with DefaultScope.overwrite_default_scope('mmdet'):
        torch.manual_seed(seed)
        return MODELS.build(copy.deepcopy(cfg_dict))


def run_and_backward(module, inputs, call):
    """Outputs, input grads and parameter grads of one train-mode step on a
    fixed random projection of the outputs, and the bytes saved for
    backward. ``call(module, *inputs)`` runs the module."""
    module.train()
    module.zero_grad()
    inputs = [x.detach().clone().requires_grad_() for x in inputs]
    with SavedTensorMeter(module.parameters()) as meter:
        outs = list(_flatten(call(module, *inputs)))
    gen = torch.Generator().manual_seed(1)
    loss = sum((t * torch.randn(t.shape, generator=gen)).sum() for t in outs)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return [t.detach() for t in outs], [x.grad for x in inputs], grads, meter.bytes


def _flatten(outs):
    if torch.is_tensor(outs):
        yield outs
    else:
        for out in outs:
            yield from _flatten(out)


def assert_same(a, b):
    """Bit-identical, or equal within 1e-6 (summation order of gradients
    that several checkpointed units accumulate)."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        if not torch.equal(x, y):
            torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6)


def compare_with_cp(cfg: dict, inputs, call):
    """Build ``cfg`` with with_cp False and True (same weights): outputs and
    gradients must agree, and with_cp must save less for backward."""
    plain = build({**cfg, 'with_cp': False})
    ckpt = build({**cfg, 'with_cp': True})
    ckpt.load_state_dict(plain.state_dict())
    out_a, in_a, grads_a, bytes_a = run_and_backward(plain, inputs, call)
    out_b, in_b, grads_b, bytes_b = run_and_backward(ckpt, inputs, call)
    assert_same(out_a, out_b)
    assert_same(in_a, in_b)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 3
    assert_same(list(grads_a.values()), list(grads_b.values()))
    assert bytes_b < 0.5 * bytes_a, (bytes_a, bytes_b)
    return ckpt


# -------------------------------------------------------- each option alone
def test_simple_fpn_with_cp_same_outputs_and_grads():
    cfg = dict(type='SimpleFPN', backbone_channel=32, in_channels=[8, 16, 32, 32],
               out_channels=16, num_outs=5, norm_cfg=LN2D)
    torch.manual_seed(0)
    ckpt = compare_with_cp(cfg, [torch.randn(2, 32, 6, 10)], lambda m, x: m((x, )))
    ckpt.eval()
    with torch.no_grad():  # a test pass runs plainly
        assert len(ckpt((torch.randn(1, 32, 4, 4), ))) == 5


HEADS = {
    'rpn': ('RPNHead', 'CheckpointRPNHead',
            dict(in_channels=16, feat_channels=16, num_convs=2,
                 anchor_generator=dict(type='AnchorGenerator', scales=[8],
                                       ratios=[0.5, 1.0, 2.0], strides=[4, 8])),
            [(2, 16, 16, 24), (2, 16, 8, 12)]),
    'bbox': ('Shared4Conv1FCBBoxHead', 'CheckpointShared4Conv1FCBBoxHead',
             dict(in_channels=16, conv_out_channels=16, fc_out_channels=32,
                  roi_feat_size=7, num_classes=3, norm_cfg=LN2D),
             [(12, 16, 7, 7)]),
    'mask': ('FCNMaskHead', 'CheckpointFCNMaskHead',
             dict(in_channels=16, conv_out_channels=16, num_classes=3, norm_cfg=LN2D),
             [(5, 16, 14, 14)]),
}


@pytest.mark.parametrize('name', list(HEADS))
def test_checkpoint_heads_same_outputs_and_grads(name):
    parent, child, kwargs, shapes = HEADS[name]
    torch.manual_seed(0)
    inputs = [torch.randn(*shape) for shape in shapes]
    if name == 'rpn':  # the pyramid levels as one tuple
        def call(module, *feats):
            return module(feats)
    else:
        def call(module, x):
            return module(x)
    ckpt = compare_with_cp(dict(type=child, **kwargs), inputs, call)
    # mmdet's own head with the same weights computes the same: the subclass
    # only adds with_cp (same state-dict keys, so checkpoints load either way).
    original = build(dict(type=parent, **kwargs))
    assert original.state_dict().keys() == ckpt.state_dict().keys()
    original.load_state_dict(ckpt.state_dict())
    original.train()
    ckpt.train()
    assert_same(list(_flatten(call(original, *inputs))), list(_flatten(call(ckpt, *inputs))))


# ------------------------------------------------- the whole ViT detector
def tiny_vit_cfg(options: dict = None) -> Config:
    cfg = Config.fromfile(str(VIT))
    cfg.merge_from_dict(copy.deepcopy({**TINY_VIT, **(options or {})}))
    return cfg


def detector_step(cfg: Config, batch: dict):
    """Losses and gradients of one training step of the detector of ``cfg``
    (random weights, seed 0), as detection_memory.py builds it, and its
    neck/head options."""
    init_default_scope('mmdet')
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = tool.build_detector(cfg, 'dtl', 0, torch.device('cpu'))
        data = model.data_preprocessor(copy.deepcopy(batch), training=True)
        torch.manual_seed(0)  # drop path, RoI sampling
        losses = model(**data, mode='loss')
        loss, _ = model.parse_losses(losses)
        loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    values = {k: v.detach() for k, v in losses.items() if torch.is_tensor(v)}
    return values, grads, model


def test_vit_detector_options_on_by_default_and_results_preserving():
    """The config turns every option on; the step with them gives the
    losses and gradients of the step without them."""
    cfg = Config.fromfile(str(VIT)).model
    assert cfg.backbone.checkpoint_suffix is True
    assert cfg.neck.with_cp is True
    assert (cfg.rpn_head.type, cfg.rpn_head.with_cp) == ('CheckpointRPNHead', True)
    assert (cfg.roi_head.bbox_head.type, cfg.roi_head.bbox_head.with_cp) == \
        ('CheckpointShared4Conv1FCBBoxHead', True)
    assert (cfg.roi_head.mask_head.type, cfg.roi_head.mask_head.with_cp) == \
        ('CheckpointFCNMaskHead', True)
    assert cfg.backbone.drop_path_rate > 0  # checkpoints replay the same drop path

    batch = tool.synthetic_batch((64, 96), 2, 3, 80, 0)
    on_losses, on_grads, on_model = detector_step(tiny_vit_cfg(), batch)
    off_losses, off_grads, off_model = detector_step(tiny_vit_cfg(OPTIONS_OFF), batch)
    assert tool.neck_head_options(on_model) == \
        'with_cp: neck, rpn_head, roi_head.bbox_head, roi_head.mask_head'
    assert tool.neck_head_options(off_model) == 'none'
    assert on_model.backbone.checkpoint_suffix and not off_model.backbone.checkpoint_suffix
    assert on_losses.keys() == off_losses.keys() and 'loss_mask' in on_losses
    assert_same(list(on_losses.values()), list(off_losses.values()))
    # Every trainable part got a gradient, the same with and without.
    assert on_grads.keys() == off_grads.keys()
    for part in ('backbone.csn.', 'neck.', 'rpn_head.', 'roi_head.bbox_head.',
                 'roi_head.mask_head.'):
        assert any(k.startswith(part) for k in on_grads), part
    assert_same(list(on_grads.values()), list(off_grads.values()))


def test_detection_memory_reports_options_and_is_fair(tmp_path, load_cli):
    """Both sides run the configured neck/heads; only DTL runs the frozen
    trunk's checkpoint_suffix; the table says so."""
    cli = load_cli('tools/analysis/detection_memory.py')
    options = [f'{k}={v}' for k, v in TINY_VIT.items() if not k.endswith('_delete_')]
    options.append('model.backbone.arch._delete_=True')
    rows = cli.main([str(VIT), '--img-size', '64', '96', '--batch-size', '1',
                     '--num-objects', '2', '--device', 'cpu', '--work-dir', str(tmp_path),
                     '--cfg-options', *options])
    dtl, full = rows
    assert dtl['backbone_options'] == 'freeze_backbone=True checkpoint_suffix=True'
    assert full['backbone_options'] == 'freeze_backbone=False'
    expected = 'with_cp: neck, rpn_head, roi_head.bbox_head, roi_head.mask_head'
    assert dtl['neck_head_options'] == full['neck_head_options'] == expected
    assert dtl['activation_vs_full'] < 1 and dtl['step_s'] > 0
    table = (tmp_path / 'detection_memory.md').read_text()
    assert f'neck/head memory options (both modes): {expected}' in table
    assert '| freeze_backbone=False | ' + expected + ' |' in table
    header = (tmp_path / 'detection_memory.csv').read_text().splitlines()[0]
    assert header.startswith('config,mode,backbone_options,neck_head_options,')


# --------------------------------------------------- out_indices vs the neck
def test_cut_out_indices_is_a_clear_error():
    """Swin-T Mask R-CNN with its stride-4 stage cut from out_indices: the
    FPN still expects 4 inputs (mmdet itself fails with a bare assert)."""
    cfg = Config.fromfile(str(SWIN_T))
    check_backbone_reaches_neck(cfg)  # the config as shipped fits
    cfg.merge_from_dict({'model.backbone.out_indices': (1, 2, 3)})
    with pytest.raises(ValueError) as info:
        check_backbone_reaches_neck(cfg)
    message = str(info.value)
    for text in (str(SWIN_T.name), 'model.backbone.out_indices=(1, 2, 3)',
                 'gives 3 feature maps (channels [192, 384, 768])', 'expects 4',
                 'model.neck.in_channels=[96, 192, 384, 768]',
                 'set model.neck.in_channels=[192, 384, 768]'):
        assert text in message, message


def test_neck_channel_and_featmap_errors():
    cfg = tiny_vit_cfg()
    check_backbone_reaches_neck(cfg)
    cfg.merge_from_dict({'model.backbone.out_type': 'cls_token'})
    with pytest.raises(ValueError, match=r"out_type='cls_token'\) gives outputs of shapes "
                       r'\[\(1, 32\)\].*model.backbone.out_type="featmap"'):
        check_backbone_reaches_neck(cfg)
    with pytest.raises(ValueError, match=r'model.neck.backbone_channel=48'):
        check_neck_inputs(dict(type='SimpleFPN', backbone_channel=48), [(1, 32, 4, 4)])
    with pytest.raises(ValueError, match=r'expects model.neck.in_channels=\[8, 16\]. Set '
                       r'model.neck.in_channels=\[8, 32\]'):
        check_neck_inputs(dict(type='FPN', in_channels=[8, 16]), [(1, 8, 8, 8), (1, 32, 4, 4)],
                          dict(out_indices=(0, 1)))
    check_neck_inputs(None, [(1, 8)])  # no neck, nothing to check
    # SimpleFPN itself names the keys at its first forward.
    from mmdtl.models.necks import SimpleFPN
    neck = SimpleFPN(backbone_channel=32, in_channels=[8, 16, 32, 32], out_channels=8)
    with pytest.raises(ValueError, match=r'model.neck.backbone_channel=32.*model.backbone.'
                       r'out_type="featmap".*model.backbone.out_indices'):
        neck((torch.randn(1, 16, 4, 4), ))


def test_detection_memory_refuses_cut_out_indices(tmp_path, load_cli):
    cli = load_cli('tools/analysis/detection_memory.py')
    with pytest.raises(SystemExit, match='model.backbone.out_indices'):
        cli.main([str(SWIN_T), '--work-dir', str(tmp_path), '--cfg-options',
                  'model.backbone.out_indices=(1,2,3)'])


def test_full_mode_drops_every_frozen_trunk_option():
    """A config with recomputed running sums and sub-layer checkpoints (both
    need checkpoint_suffix) builds its full fine-tuning side plain: every
    option of DTLOptions that serves a frozen trunk is reset, so none is
    refused for lack of another."""
    from mmdtl.models.dtl import DTLOptions
    cfg = tiny_vit_cfg({'model.backbone.recompute_running_sums': True,
                        'model.backbone.checkpoint_sublayers': True})
    dtl = tool.build_detector(cfg, 'dtl', 0, torch.device('cpu'))
    assert dtl.backbone.dtl_options.checkpoint_sublayers
    full = tool.build_detector(cfg, 'full', 0, torch.device('cpu'))
    assert full.backbone.dtl_options == DTLOptions(freeze_backbone=False)
    assert 'checkpoint_sublayers=True' in tool.backbone_options(dtl.backbone)
