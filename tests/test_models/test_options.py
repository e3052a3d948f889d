"""DTLOptions, the compatibility table and the presets."""
import pytest

from mmdtl.models.dtl import INCOMPATIBLE, PRESETS, DTLOptions, preset_names, preset_options


def test_split_separates_dtl_options_from_the_parents_arguments():
    options, rest = DTLOptions.split(dict(checkpoint_suffix=True, arch='b', img_size=224,
                                          frozen_weights_dtype='bfloat16'))
    assert options == DTLOptions(checkpoint_suffix=True, frozen_weights_dtype='bfloat16')
    assert rest == dict(arch='b', img_size=224)


def test_presets_are_valid_and_named():
    names = preset_names()
    assert set(PRESETS) <= set(names)
    assert 'dtl+ckpt+rp_half' in names and 'dtl+packed_half' not in names
    dwconv, options = preset_options('dtl+ckpt+rp_half', half_dtype='float16')
    assert dwconv and options == dict(checkpoint_suffix=True, recompute_prefix_taps=True,
                                      frozen_weights_dtype='float16')
    assert preset_options('dtl') == (False, {})
    # The released recipe's leanest exact variant: every recompute option.
    assert preset_options('dtl+ckpt+rp+rs_half') == (True, dict(
        checkpoint_suffix=True, recompute_prefix_taps=True, recompute_running_sums=True,
        frozen_weights_dtype='bfloat16'))
    assert DTLOptions(**preset_options('dtl+cache')[1]).needs_deterministic_prefix
    with pytest.raises(ValueError, match=r"unknown DTL method 'dtl\+\+'"):
        preset_options('dtl++')


@pytest.mark.parametrize('rule', INCOMPATIBLE, ids=lambda r: f'{r[0]}+{r[2]}')
def test_every_rule_of_the_table_refuses_its_pair_and_only_it(rule):
    first, _, second, _, reason = rule
    values = dict(recompute_prefix_taps=True, prefix_cache=dict(storage='memory'),
                  freeze_backbone=False, frozen_weights_dtype='bfloat16',
                  pack_frozen_weights=True)
    with pytest.raises(ValueError) as err:
        DTLOptions(**{first: values[first], second: values[second]}).check('DTLViT')
    assert str(err.value).startswith(f'DTLViT: {first}=') and reason in str(err.value)
    DTLOptions(**{first: values[first]}).check('DTLViT')  # either alone is fine
    DTLOptions(**{second: values[second]}).check('DTLViT')
