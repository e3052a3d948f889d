"""Memory options of the side network's execution: recomputed running sums
(``recompute_running_sums``), sub-layer checkpoints (``checkpoint_sublayers``)
and checkpoints that keep no RNG state where
nothing random is recomputed. Each leaves logits and gradients bit-identical
and keeps less for backward."""
import pytest
import torch
from test_trunks import TRUNKS, build, images_of, plain_result, step

import mmdtl  # noqa: F401
from mmdtl.models.dtl.options import REQUIRES, DTLOptions
from mmdtl.models.dtl.runner import _stochastic
from mmdtl.utils.memory import StorageMemoryTracker, cpu_step_peaks


@pytest.mark.parametrize('prefix', [{}, dict(recompute_prefix_taps=True)],
                         ids=['plain', 'recomputed'])
@pytest.mark.parametrize('storage', ['fp32', 'bf16'])
@pytest.mark.parametrize('trunk', list(TRUNKS))
def test_recomputed_running_sums_are_bit_identical(trunk, storage, prefix):
    """Every trunk (Swin and ConvNeXt: sums that restart at a stage inside
    the suffix), fp32 and bf16 autocast, half-stored weights: the same bits
    as the plain runner."""
    assert_same_bits_as_plain(trunk, storage == 'bf16', checkpoint_suffix=True,
                              recompute_running_sums=True, **prefix)


def assert_same_bits_as_plain(trunk, half, **options):
    """Logits and CSN gradients of ``options`` equal the plain runner's
    exactly: fp32 and bf16 autocast, or bf16 with half-stored weights."""
    if half:
        options['frozen_weights_dtype'] = 'bfloat16'
    model = build(trunk, **options).train()
    if half:  # the same fp32 weights, rounded once
        model.load_state_dict(build(trunk).state_dict())
    for autocast in ([True] if half else [False, True]):
        outs, grads = step(model, images_of(trunk), autocast)
        expected_outs, expected_grads = plain_result(trunk, autocast)
        for out, expected in zip(outs, expected_outs):
            torch.testing.assert_close(out, expected, rtol=0, atol=0)
        assert grads.keys() == expected_grads.keys()
        for name in grads:
            torch.testing.assert_close(grads[name], expected_grads[name], rtol=0, atol=0,
                                       msg=name)


def dino_like(**options):
    """A ViT with the released recipe's shape (taps at every block, M at half
    the depth, DTL+): 8 blocks, 4 checkpointed units."""
    from mmpretrain.registry import MODELS
    torch.manual_seed(0)
    model = MODELS.build(dict(
        type='DTLViT', arch=dict(embed_dims=32, num_layers=8, num_heads=2,
                                 feedforward_channels=64),
        img_size=32, patch_size=8, out_type='avg_featmap', final_norm=False,
        csn=dict(type='CompactSideNetwork', rank=2, start=4, dwconv_kernel=3), **options))
    for up in model.csn.up_projs.values():
        torch.nn.init.normal_(up, std=0.3)
    return model.train()


def test_recomputed_running_sums_keep_none_for_backward():
    """After forward, a checkpointed suffix holds each unit's input and,
    without the option, the running sum entering each unit (bf16 under
    autocast). With it only the sum entering the first unit is left, which
    block M's add-back holds anyway, and each unit's tap projected to the
    rank."""
    images = torch.randn(4, 3, 32, 32)
    alive = {}
    for recompute in (False, True):
        model = dino_like(checkpoint_suffix=True, recompute_running_sums=recompute)
        with StorageMemoryTracker() as tracker, torch.autocast('cpu', torch.bfloat16):
            out = model(images)[0]
        alive[recompute] = tracker.current
        out.float().sum().backward()
    # Spared: the sums entering units 6 and 7, (4, 1 + 4 * 4, 32) bf16 each;
    # kept instead: units 5-7's taps projected to rank 2, (4, 17, 2) bf16.
    assert alive[False] - alive[True] == 2 * 4 * 17 * 32 * 2 - 3 * 4 * 17 * 2 * 2


def step_tensor_peak(model, images) -> int:
    """The tensor peak of one bf16-autocast training step of ``model``."""
    params = [p for p in model.parameters() if p.requires_grad]

    def train_step():
        with torch.autocast('cpu', torch.bfloat16):
            out = model(images)[0]
        out.float().sum().backward()
        for p in params:
            p.grad = None

    return cpu_step_peaks(train_step, [*model.parameters(), images]).tensors


def test_recomputed_running_sums_lower_the_step_peak():
    images = torch.randn(4, 3, 32, 32)
    peaks = {recompute: step_tensor_peak(dino_like(checkpoint_suffix=True,
                                                   recompute_running_sums=recompute), images)
             for recompute in (False, True)}
    assert peaks[True] < peaks[False]


def test_a_second_backward_with_retain_graph():
    model = dino_like(checkpoint_suffix=True, recompute_running_sums=True)
    out = model(torch.randn(2, 3, 32, 32))[0].sum()
    out.backward(retain_graph=True)
    first = {n: p.grad.clone() for n, p in model.csn.named_parameters()}
    out.backward()
    for name, param in model.csn.named_parameters():
        torch.testing.assert_close(param.grad, 2 * first[name], msg=name)


@pytest.mark.parametrize('option,needed,reason', REQUIRES, ids=[r[0] for r in REQUIRES])
def test_an_option_without_the_one_it_needs_is_refused(option, needed, reason):
    """Every entry of REQUIRES: one line naming both options, at build time."""
    with pytest.raises(ValueError, match=rf'^DTLViT: {option}=True needs {needed}=True \(') as err:
        DTLOptions(**{option: True}).check('DTLViT')
    assert '\n' not in str(err.value) and reason in str(err.value)
    DTLOptions(**{option: True, needed: True}).check('DTLViT')
    with pytest.raises(ValueError, match=f'needs {needed}=True'):
        dino_like(**{option: True})


def test_the_requirements_table_lists_both_recomputations():
    assert [r[:2] for r in REQUIRES] == [('recompute_running_sums', 'checkpoint_suffix'),
                                         ('checkpoint_sublayers', 'checkpoint_suffix')]


@pytest.mark.parametrize('sums', [False, True], ids=['sums-kept', 'sums-recomputed'])
@pytest.mark.parametrize('storage', ['fp32', 'bf16'])
@pytest.mark.parametrize('trunk', ['vit', 'deit3', 'beit', 'eva02', 'swin'])
def test_checkpointed_sublayers_are_bit_identical(trunk, storage, sums):
    """Attention and MLP halves checkpointed apart inside a checkpointed unit
    (Swin: sums that restart at a stage inside the suffix):
    the same bits as the plain runner, fp32 and bf16 autocast, half-stored
    weights, with or without recomputed running sums."""
    assert_same_bits_as_plain(trunk, storage == 'bf16', checkpoint_suffix=True,
                              checkpoint_sublayers=True, recompute_running_sums=sums)


@pytest.mark.parametrize('trunk', ['vit', 'deit3', 'beit', 'eva02', 'swin'])
def test_checkpointed_sublayers_with_drop_path_draw_the_same_numbers(trunk):
    """A stochastic block: each sub-layer's recomputation restores the RNG
    state, so gradients equal those of whole-block checkpoints, and differ
    from another seed's."""
    images = images_of(trunk)

    def grads(seed, **options):
        model = build(trunk, checkpoint_suffix=True, drop_path_rate=0.3, **options).train()
        torch.manual_seed(seed)
        return step(model, images)[1]

    whole, split = grads(1), grads(1, checkpoint_sublayers=True)
    for name in whole:
        assert whole[name].abs().sum() > 0, name
        torch.testing.assert_close(split[name], whole[name], rtol=0, atol=0, msg=name)
    other = grads(2)
    assert any(not torch.equal(other[n], whole[n]) for n in whole)


def test_checkpointed_sublayers_lower_the_step_peak():
    """The unit's recomputation keeps one sub-layer's activations at a time."""
    images = torch.randn(4, 3, 32, 32)
    peaks = {split: step_tensor_peak(dino_like(checkpoint_suffix=True, recompute_running_sums=True,
                                               checkpoint_sublayers=split), images)
             for split in (False, True)}
    assert peaks[True] < peaks[False]


@pytest.mark.parametrize('trunk', ['convnext'])
def test_checkpointed_sublayers_are_refused_where_the_adapter_does_not_split(trunk):
    with pytest.raises(ValueError, match=r'checkpoint_sublayers: \w+Adapter does not name the '
                                         r'sub-layers of \w+ blocks') as err:
        build(trunk, checkpoint_suffix=True, checkpoint_sublayers=True)
    assert '\n' not in str(err.value)


def test_stochastic_finds_every_kind_of_dropout():
    """A block draws random numbers through a dropout module, a drop path or
    a dropout rate that the attention kernel reads (mmpretrain's
    MultiheadAttention keeps ``attn_drop`` as a float); only then does its
    checkpoint keep the RNG state."""
    from mmpretrain.models.backbones.vision_transformer import TransformerEncoderLayer
    layer = dict(embed_dims=16, num_heads=2, feedforward_channels=32)
    assert not _stochastic(TransformerEncoderLayer(**layer))
    assert _stochastic(TransformerEncoderLayer(**layer, drop_path_rate=0.1))
    assert _stochastic(TransformerEncoderLayer(**layer, drop_rate=0.1))
    assert _stochastic(TransformerEncoderLayer(**layer, attn_drop_rate=0.1))


def test_checkpoints_keep_no_rng_state_for_deterministic_blocks():
    """``torch.utils.checkpoint`` keeps a copy of the CPU RNG state (5056
    bytes) per checkpoint unless told otherwise: host memory on a GPU, but on
    CPU the estimator's validation saw it as a 1.6 % error on a tiny ViT.
    Deterministic units and side outputs keep none; a block with drop path
    still does, and its recomputation draws the same numbers."""
    calls = []
    real = torch.get_rng_state

    def counted():
        calls.append(1)
        return real()

    images = torch.randn(2, 3, 32, 32)
    torch.get_rng_state = counted
    try:
        model = dino_like(checkpoint_suffix=True)
        model(images)[0].sum().backward()
        assert not calls
        stochastic = dino_like(checkpoint_suffix=True, drop_path_rate=0.1)
        stochastic(images)[0].sum().backward()
        # Blocks 5-7: saved in forward, and again around each recomputation
        # (test_memory_optimisations checks that drop path recomputes the same).
        assert len(calls) == 2 * 3
    finally:
        torch.get_rng_state = real
