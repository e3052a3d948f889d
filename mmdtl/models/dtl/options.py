"""How a DTL backbone runs: one options object, one compatibility table,
named presets.

Every DTL backbone (``DTLViT``, ``DTLSwin``, ``DTLDeiT3``, ``DTLBEiT``,
``DTLConvNeXt``, ...) takes the fields of :class:`DTLOptions` as keyword
arguments next to its parent's. Combinations that cannot work are listed in
:data:`INCOMPATIBLE` and refused when the backbone is built, with one line
naming both options; what depends on the trunk (a deterministic prefix, no
output inside the prefix) is checked by the runner
(:meth:`mmdtl.models.dtl.DTLRunner.check_options`).

:data:`PRESETS` names the memory/speed methods that ``tools/analysis/benchmark.py``
and ``tools/analysis/memory_scaling.py`` compare; :func:`preset_options` turns
a method name (``'dtl+ckpt+rp_half'``) into backbone arguments.
"""
import dataclasses
from typing import Callable, Dict, List, Optional, Tuple, Union

from ..frozen_dtype import parse_frozen_weights_dtype


@dataclasses.dataclass
class DTLOptions:
    """The options of a DTL backbone beyond its side network (``csn``).

    Args:
        freeze_backbone (bool): Freeze every parameter outside the side
            network. Defaults to True.
        checkpoint_suffix (bool): Activation checkpointing of the blocks
            after ``M``: each block runs with its CSN tap and add-back as one
            checkpointed unit, so backward keeps only the block input and the
            running sum and recomputes the rest. Same outputs and gradients,
            more compute. Defaults to False.
        recompute_running_sums (bool): With ``checkpoint_suffix``, the
            checkpointed units keep no CSN running sum (B, N, C) for
            backward: each reads the sum entering it from the one entering
            the first unit plus the units' taps projected to the rank
            (B, N, rank), which are kept, recomputing the up-projections
            and additions in between when backward recomputes the unit.
            Same outputs and gradients (the same ops in the same order);
            ``n (n - 1) / 2`` more up-projections and additions in backward
            for ``n`` checkpointed units. Defaults to False.
        checkpoint_sublayers (bool): With ``checkpoint_suffix``, when
            backward recomputes a unit, each sub-layer of its block
            (attention, then MLP, with their residuals) runs under its own
            checkpoint, so only one sub-layer's activations exist at a time
            instead of the whole block's. Same outputs and gradients, one
            more block forward per unit in backward. Trunks whose adapter
            names the sub-layers (:meth:`TrunkAdapter.block_sublayers`:
            ViT, DeiT3, BEiT, EVA-02, Swin); refused on the others (ConvNeXt,
            whose block has no residual inside). Defaults to False.
        recompute_prefix_taps (bool): Keep none of the frozen prefix's tapped
            block inputs for backward: the prefix's taps run in one autograd
            function that saves only the images and runs blocks ``0..M`` again
            in backward (see
            :meth:`CompactSideNetwork.recomputed_prefix_taps`). Same outputs
            and gradients, one extra prefix forward per step. Defaults to
            False.
        prefix_cache (dict, optional): Cache the frozen prefix's features
            per image and skip the prefix on a hit (see
            :class:`PrefixFeatureCache` for the keys, e.g.
            ``dict(storage='device')``). Defaults to None (no cache).
        pack_frozen_weights (bool | str): On CPU, run the frozen linears on
            oneDNN-packed weights (see :class:`FrozenLinearPacks`); no effect
            on GPU or under autocast. ``'auto'`` times packed and default
            kernels once, on the first training step's shapes, keeps the
            faster and logs the choice in one line (whether packing pays
            depends on the CPU and the PyTorch build); until then, and in
            runs that never train, the default kernels run. Same results
            either way. Defaults to False.
        frozen_weights_dtype (str, optional): Store the frozen Linear/Conv
            weights as ``'bfloat16'`` or ``'float16'`` (see
            :mod:`mmdtl.models.frozen_dtype`). Defaults to None (fp32).
        allow_random_trunk (bool): Allow training a frozen trunk that was
            never loaded from a checkpoint (e.g. a random-trunk control).
            Defaults to False.
        allow_partial_trunk (bool): Warn instead of raising when a checkpoint
            does not fit the trunk (see :mod:`mmdtl.utils.trunk_keys`).
            Defaults to False.
    """
    freeze_backbone: bool = True
    checkpoint_suffix: bool = False
    recompute_running_sums: bool = False
    checkpoint_sublayers: bool = False
    recompute_prefix_taps: bool = False
    prefix_cache: Optional[dict] = None
    pack_frozen_weights: Union[bool, str] = False
    frozen_weights_dtype: Optional[str] = None
    allow_random_trunk: bool = False
    allow_partial_trunk: bool = False

    @classmethod
    def names(cls) -> List[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def split(cls, kwargs: dict) -> Tuple['DTLOptions', dict]:
        """``(options, rest)``: the DTL options among ``kwargs`` and the
        other (the parent backbone's) arguments."""
        names = set(cls.names())
        return (cls(**{k: v for k, v in kwargs.items() if k in names}),
                {k: v for k, v in kwargs.items() if k not in names})

    @property
    def needs_deterministic_prefix(self) -> bool:
        """Whether blocks ``0..M`` must compute the same every pass (their
        features are stored or recomputed instead of kept)."""
        return self.prefix_cache is not None or self.recompute_prefix_taps

    def check(self, owner: str) -> None:
        """Refuse the combinations of :data:`INCOMPATIBLE` and the options
        of :data:`REQUIRES` without the one they need (ValueError, one line
        naming both options)."""
        self.frozen_weights_dtype = parse_frozen_weights_dtype(self.frozen_weights_dtype, owner)
        for first, first_bad, second, second_bad, reason in INCOMPATIBLE:
            a, b = getattr(self, first), getattr(self, second)
            if first_bad(a) and second_bad(b):
                raise ValueError(f'{owner}: {first}={a!r} and {second}={b!r} cannot be '
                                 f'combined: {reason}')
        for option, needed, reason in REQUIRES:
            if _on(getattr(self, option)) and not _on(getattr(self, needed)):
                raise ValueError(f'{owner}: {option}={getattr(self, option)!r} needs '
                                 f'{needed}=True ({reason}); set {needed}=True or remove '
                                 f'{option}')


def _on(value) -> bool:
    return value is not None and value is not False


def _off(value) -> bool:
    return value is False


#: The one compatibility table: (option, is it set?, other option, is it set?,
#: why the two cannot be combined). Checked at build time for every trunk.
INCOMPATIBLE: Tuple[Tuple[str, Callable, str, Callable, str], ...] = (
    ('recompute_prefix_taps', _on, 'prefix_cache', _on,
     'both skip storing the prefix, in different ways; use one of them'),
    ('recompute_prefix_taps', _on, 'freeze_backbone', _off,
     'the prefix is recomputed without gradients; it needs freeze_backbone=True'),
    ('prefix_cache', _on, 'freeze_backbone', _off,
     'cached prefix features carry no gradient; it needs freeze_backbone=True'),
    ('frozen_weights_dtype', _on, 'freeze_backbone', _off,
     'half-stored weights are not trained; it needs freeze_backbone=True'),
    ('frozen_weights_dtype', _on, 'pack_frozen_weights', _on,
     'packing serves fp32 CPU steps, half-stored weights serve AMP; set one of them'),
)


#: Options that work only on top of another: (option, the option it needs,
#: why). Checked with :data:`INCOMPATIBLE`.
REQUIRES: Tuple[Tuple[str, str, str], ...] = (
    ('recompute_running_sums', 'checkpoint_suffix',
     'only checkpointed units recompute what they read'),
    ('checkpoint_sublayers', 'checkpoint_suffix',
     'sub-layer checkpoints split the recomputation of a checkpointed unit'),
)


#: Named memory/speed methods of the DTL side: whether DTL+'s DWConv is on,
#: and the backbone options. ``<name>_half`` adds half-stored frozen weights.
PRESETS: Dict[str, dict] = {
    'dtl': dict(dwconv=False),
    'dtl+': dict(dwconv=True),
    'dtl+ckpt': dict(dwconv=True, checkpoint_suffix=True),
    'dtl+ckpt+rp': dict(dwconv=True, checkpoint_suffix=True, recompute_prefix_taps=True),
    'dtl+ckpt+rs': dict(dwconv=True, checkpoint_suffix=True, recompute_running_sums=True),
    'dtl+ckpt+rp+rs': dict(dwconv=True, checkpoint_suffix=True, recompute_prefix_taps=True,
                           recompute_running_sums=True),
    'dtl+ckpt+rp+rs+sl': dict(dwconv=True, checkpoint_suffix=True, recompute_prefix_taps=True,
                              recompute_running_sums=True, checkpoint_sublayers=True),
    'dtl+cache': dict(dwconv=True, prefix_cache=dict(storage='device')),
    'dtl+packed': dict(dwconv=True, pack_frozen_weights=True),
    'dtl+cache+packed': dict(dwconv=True, prefix_cache=dict(storage='device'),
                             pack_frozen_weights=True),
}
HALF_SUFFIX = '_half'


def preset_names() -> List[str]:
    """Every preset name, with the ``_half`` variants that are valid."""
    names = list(PRESETS)
    names += [n + HALF_SUFFIX for n, p in PRESETS.items() if not p.get('pack_frozen_weights')]
    return names


def preset_options(name: str, half_dtype: str = 'bfloat16') -> Tuple[bool, dict]:
    """``(dwconv, backbone options)`` of a preset name.

    Args:
        name (str): A key of :data:`PRESETS`, optionally with ``'_half'``.
        half_dtype (str): Storage dtype of the ``_half`` variants.
    """
    base = name[:-len(HALF_SUFFIX)] if name.endswith(HALF_SUFFIX) else name
    if base not in PRESETS:
        raise ValueError(f'unknown DTL method {name!r}; choose from {preset_names()}')
    options = dict(PRESETS[base])
    dwconv = options.pop('dwconv')
    if name.endswith(HALF_SUFFIX):
        options['frozen_weights_dtype'] = half_dtype
    DTLOptions(**options).check(f'method {name!r}')
    return dwconv, options
