"""SimpleFPN's start_level: the skipped levels are not built, the others are
the full pyramid's levels exactly."""
import pytest
import torch

import mmdtl  # noqa: F401
from mmdtl.models.necks import SimpleFPN


@pytest.mark.parametrize('start_level', [1, 2])
def test_start_level_builds_only_the_later_levels(start_level):
    torch.manual_seed(0)
    full = SimpleFPN(16, [4, 8, 16, 16], 8, num_outs=5)
    part = SimpleFPN(16, [4, 8, 16, 16], 8, num_outs=5 - start_level, start_level=start_level)
    assert part.fpn1 is None and (part.fpn2 is None) == (start_level == 2)
    assert len(part.lateral_convs) == len(part.fpn_convs) == 4 - start_level
    # The full pyramid's weights of the kept levels, moved to their new index.
    state = {}
    for key, value in full.state_dict().items():
        kind, _, rest = key.partition('.')
        if kind in ('lateral_convs', 'fpn_convs'):
            index, _, name = rest.partition('.')
            if int(index) >= start_level:
                state[f'{kind}.{int(index) - start_level}.{name}'] = value
        elif not (kind == 'fpn1' or (kind == 'fpn2' and start_level == 2)):
            state[key] = value
    part.load_state_dict(state)
    x = torch.randn(2, 16, 8, 8)
    expected, got = full([x]), part([x])
    assert len(got) == 5 - start_level
    for a, b in zip(expected[start_level:], got):
        assert torch.equal(a, b)


def test_start_level_out_of_range_is_refused():
    with pytest.raises(ValueError, match='start_level must be 0, 1, 2 or 3'):
        SimpleFPN(16, [4, 8, 16, 16], 8, start_level=4)
    with pytest.raises(ValueError, match=r'num_outs must be an int >= 2 \(4 - start_level\)'):
        SimpleFPN(16, [4, 8, 16, 16], 8, start_level=2, num_outs=1)
