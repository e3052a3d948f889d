""":class:`DTLBackbone`: what every DTL backbone adds to its mmpretrain parent."""
from typing import Type, Union

import torch
import torch.nn as nn

from mmdtl.utils.trunk_keys import install_trunk_check

from ..frozen_dtype import store_frozen_weights
from ..frozen_linear import build_frozen_linear_packs
from ..prefix_cache import build_prefix_cache
from ..side_network import CompactSideNetwork, build_side_network
from .adapter import TrunkAdapter
from .options import DTLOptions
from .runner import DTLRunner


class DTLBackbone:
    """Mixin that turns an mmpretrain backbone into a DTL backbone.

    Put it first among the bases and set :attr:`trunk_adapter`; that is a
    whole DTL backbone::

        @MODELS.register_module()
        class DTLDeiT3(DTLBackbone, DeiT3):
            trunk_adapter = DeiT3Adapter

    Its ``__init__`` takes the side network's config ``csn`` and the fields of
    :class:`DTLOptions` next to the parent's arguments, builds the parent,
    calls :meth:`register_trunk_hooks` and then :meth:`setup_dtl`. The
    parent's ``forward`` is replaced by :class:`DTLRunner`'s; every other
    parent feature (archs, ``out_indices``, checkpoints) is kept.

    Args:
        csn (dict | nn.Module): The side network's config (the backbone
            fills in ``embed_dims``, ``num_layers`` and ``stages``) or a
            built :class:`CompactSideNetwork` for this backbone.
        **kwargs: The fields of :class:`DTLOptions` and the parent's
            arguments.
    """
    trunk_adapter: Type[TrunkAdapter] = TrunkAdapter

    def __init__(self, *args, csn: Union[dict, nn.Module] = dict(type='CompactSideNetwork'),
                 **kwargs):
        options, kwargs = DTLOptions.split(kwargs)
        super().__init__(*args, **kwargs)
        self.register_trunk_hooks()
        self.setup_dtl(csn, options)

    def register_trunk_hooks(self) -> None:
        """Register ``load_state_dict`` hooks of this trunk that must run
        before the trunk check (e.g. key renames). Defaults to none."""

    def setup_dtl(self, csn: Union[dict, nn.Module], options: DTLOptions) -> None:
        """Freeze the trunk, build the side network and apply ``options``
        (called by ``__init__`` after the parent's and the trunk's hooks).

        Args:
            csn (dict | nn.Module): See the class.
            options (DTLOptions): The backbone's DTL options.
        """
        owner = type(self).__name__
        options.check(owner)
        self.dtl_options = options
        if options.freeze_backbone:
            self.requires_grad_(False)
        self.dtl_trunk = self.trunk_adapter(self)
        self.dtl_runner = DTLRunner(self)
        defaults = self.csn_defaults()
        if isinstance(csn, dict):
            _check_csn_cfg(csn, owner, **defaults)
        self.csn = build_side_network(csn, **defaults)
        _check_built_csn(self.csn, **defaults)
        # After the parent's load hooks (pos-embed resize, key renames).
        install_trunk_check(self, options.allow_random_trunk, options.allow_partial_trunk)
        self.frozen_linear_packs = build_frozen_linear_packs(options.pack_frozen_weights, owner)
        self.dtl_runner.check_options(options)
        self.prefix_cache = build_prefix_cache(self, options.prefix_cache)
        self.frozen_weights_dtype = store_frozen_weights(
            self, options.frozen_weights_dtype, owner,
            keep_fp32=self.dtl_trunk.weights_read_directly)

    # The options read as before the options object (configs, hooks, tests).
    @property
    def freeze_backbone(self) -> bool:
        return self.dtl_options.freeze_backbone

    @property
    def checkpoint_suffix(self) -> bool:
        return self.dtl_options.checkpoint_suffix

    @checkpoint_suffix.setter
    def checkpoint_suffix(self, value: bool) -> None:
        # Switchable on a built model (memory for compute, same results).
        self.dtl_options.checkpoint_suffix = bool(value)

    @property
    def recompute_prefix_taps(self) -> bool:
        return self.dtl_options.recompute_prefix_taps

    def csn_defaults(self) -> dict:
        """What this backbone fills into a side-network config: the dims and
        stage of every block, numbered globally."""
        dims = self.dtl_trunk.block_dims()
        return dict(embed_dims=dims, num_layers=len(dims),
                    stages=self.dtl_trunk.block_stages())

    def forward(self, x: torch.Tensor) -> tuple:
        return self.dtl_runner.forward(x)

    def train(self, mode: bool = True):
        # mmpretrain backbones' train() returns None; keep nn.Module's chaining.
        super().train(mode)
        return self


def _check_csn_cfg(csn: dict, owner: str, **backbone) -> None:
    """The backbone fills in these csn options; one set by hand must agree."""
    for key, value in backbone.items():
        if key not in csn:
            continue
        given = csn[key]
        if key == 'embed_dims' and isinstance(given, int):
            given = [given] * len(value)
        if isinstance(given, (list, tuple)):
            given = list(given)
        if given != value:
            raise ValueError(f'csn.{key}={csn[key]!r} does not match the backbone, which has '
                             f'{key}={value}; leave it out of the csn config ({owner} fills '
                             f'it in)')


def _check_built_csn(csn: CompactSideNetwork, embed_dims, num_layers, stages) -> None:
    """A side network passed built must fit the backbone's blocks."""
    if (csn.num_layers != num_layers or list(csn.embed_dims) != list(embed_dims)
            or list(csn.stages) != list(stages)):
        raise ValueError(
            f'csn was built for {csn.num_layers} blocks of dims {list(csn.embed_dims)} in '
            f'stages {list(csn.stages)}, but the backbone has {num_layers} blocks of dims '
            f'{list(embed_dims)} in stages {list(stages)}')
