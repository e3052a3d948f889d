# Control: DTL+ on a randomly initialised (never pre-trained) frozen trunk,
# to show what pre-training buys. Same recipe as dtl+.py otherwise;
# allow_random_trunk lifts the check that refuses training a frozen trunk
# never loaded from a checkpoint.
_base_ = ['./dtl+.py']

model = dict(backbone=dict(init_cfg=None, allow_random_trunk=True))
