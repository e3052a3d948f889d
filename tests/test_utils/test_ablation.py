"""mmdtl.suites.ablation and mmdtl.utils.config_memory: the settings around a base side
network, the Pareto front, the seed arithmetic, and the memory of a step."""
import math

import pytest
from mmengine.config import Config

from mmdtl.suites.ablation import (
    AblationSetting,
    ablation_settings,
    ablation_table,
    pareto_front,
    plot_pareto,
    setting_description,
)
from mmdtl.utils.cfg_options import parse_cfg_options
from mmdtl.utils.config_memory import config_step_memory

DEMO = 'configs/demo/vit-demo_dtl+_fashion.py'


def test_settings_of_the_demo_and_of_vit_b():
    demo = ablation_settings(depth=6, start=3, rank=2, kernel=3)
    assert [s.name for s in demo] == [
        'base', 'M=1', 'M=2', 'M=4', 'M=5', 'rank=1', 'rank=4', 'rank=8', 'kernel=0',
        'kernel=1', 'kernel=5', 'taps every 2', 'taps every 3', 'taps from 1', 'taps from 3']
    by_name = {s.name: s for s in demo}
    assert by_name['base'].csn == {}
    assert by_name['M=5'].csn == {'start': 5}
    assert by_name['kernel=0'].csn == {'dwconv_kernel': 0}
    assert by_name['taps every 3'].csn == {'taps': [0, 3]}
    assert by_name['taps from 3'].csn == {'taps': [3, 4, 5]}
    assert by_name['taps every 2'].cfg_options() == ['model.backbone.csn.taps=[0,2,4]']
    assert by_name['rank=8'].cfg_options() == ['model.backbone.csn.rank=8']

    vit_b = ablation_settings(depth=12, start=6, rank=2, kernel=0)
    assert [s.name for s in vit_b if s.axis == 'M'] == ['M=2', 'M=4', 'M=8', 'M=10']
    assert [s.name for s in vit_b if s.axis == 'kernel'] == ['kernel=1', 'kernel=3',
                                                             'kernel=5']
    assert {s.name: s.csn['taps'] for s in vit_b if s.axis == 'taps'} == {
        'taps every 2': list(range(0, 12, 2)), 'taps every 3': [0, 3, 6, 9],
        'taps from 3': list(range(3, 12)), 'taps from 6': list(range(6, 12))}
    with pytest.raises(ValueError, match=r'csn.start \(M\) must be in \[1, 5\]'):
        ablation_settings(depth=6, start=6, rank=2, kernel=3)


def test_every_setting_builds_the_side_network_it_names():
    from mmpretrain.registry import MODELS

    import mmdtl  # noqa: F401

    base = Config.fromfile(DEMO)
    csn = base.model.backbone.csn
    for setting in ablation_settings(6, csn.start, csn.rank, csn.dwconv_kernel):
        cfg = Config.fromfile(DEMO)
        cfg.merge_from_dict(parse_cfg_options(setting.cfg_options()))
        built = MODELS.build(cfg.model.backbone).csn
        want = dict(csn.to_dict(), **setting.csn)
        assert (built.start, built.rank, built.taps) == (want['start'], want['rank'],
                                                         want['taps']), setting
        assert built.dwconv_kernel == want['dwconv_kernel'], setting
        assert bool(len(built.dwconvs)) == bool(want['dwconv_kernel']), setting
    assert setting_description(AblationSetting('kernel=0', 'kernel', {'dwconv_kernel': 0}),
                               csn.to_dict()) == 'M=3, rank 2, no DWConv, taps 0-5'
    assert setting_description(AblationSetting('t', 'taps', {'taps': [0, 3]}),
                               csn.to_dict()) == 'M=3, rank 2, k=3, taps 0,3'


def test_pareto_front():
    points = {'a': (1.0, 80.0), 'b': (2.0, 85.0), 'c': (2.0, 84.0), 'd': (3.0, 85.0),
              'e': (4.0, 90.0), 'f': (0.5, 70.0), 'g': (1.0, 80.0)}
    # c is beaten by b (same memory, better); d by b (less memory, same accuracy);
    # a and g tie: neither beats the other
    assert pareto_front(points) == ['f', 'a', 'g', 'b', 'e']


def test_table_means_over_seeds_and_groups(tmp_path):
    results = {
        'base': {'t1': {0: 80.0, 1: 82.0}, 't2': {0: 60.0, 1: 64.0}, 't3': {0: 40.0, 1: 50.0}},
        'M=1': {'t1': {0: 90.0}, 't2': {0: 70.0, 1: 72.0}, 't3': {0: 30.0}},
        'rank=1': {'t1': {0: 90.0}},
    }
    groups = {'natural': ['t1', 't2'], 'structured': ['t3']}
    rows = ablation_table(results, ['t1', 't2', 't3'], groups)
    base = rows['base']
    assert base['t1'] == (81.0, pytest.approx(math.sqrt(2)), 2)
    # per seed: natural 70 / 73, structured 40 / 50, Mean 55 / 61.5
    assert base['Natural'][:1] == (71.5, ) and base['Structured'][0] == 45.0
    assert base['Mean'][0] == pytest.approx(58.25) and base['Mean'][2] == 2
    # only seed 0 has every task of M=1
    assert rows['M=1']['Mean'] == (pytest.approx(((90 + 70) / 2 + 30) / 2), 0.0, 1)
    assert rows['M=1']['Natural'] == (80.0, 0.0, 1)
    assert rows['rank=1']['Mean'] is None and rows['rank=1']['t2'] is None
    plain = ablation_table(results, ['t1', 't2', 't3'])
    assert plain['base']['Mean'][0] == pytest.approx(((80 + 60 + 40) / 3 + (82 + 64 + 50) / 3)
                                                     / 2)
    path = tmp_path / 'pareto.png'
    plot_pareto(str(path), {'base': (5.0, 80.0), 'M=1': (6.0, 82.0)},
                {'base': 'base', 'M=1': 'M'}, 'MB', 'title')
    assert path.read_bytes()[:4] == b'\x89PNG'


def test_step_memory_real_and_fake_agree_and_follow_m():
    cfg = Config.fromfile(DEMO)
    real = config_step_memory(cfg)
    fake = config_step_memory(cfg, fake=True)
    assert real['trainable'] == fake['trainable'] == 3168
    assert fake['activations_mb'] == real['activations_mb']
    assert abs(fake['step_peak_mb'] / real['step_peak_mb'] - 1) < 0.01
    # M = 1 keeps the activations of blocks 1..5 instead of 3..5
    early = Config.fromfile(DEMO)
    early.merge_from_dict({'model.backbone.csn.start': 1})
    assert config_step_memory(early, fake=True)['activations_mb'] > 1.5 * fake['activations_mb']
    # the AMP recipe of a VTAB config is counted as an fp32 step
    vtab = Config.fromfile('configs/dtl/vtab/vit-b_dtl+_cifar.py')
    assert vtab.optim_wrapper.type == 'AmpOptimWrapper'
    counted = config_step_memory(vtab, fake=True, batch_size=2)
    assert counted['trainable'] == 43776 and counted['activations_mb'] > 50
