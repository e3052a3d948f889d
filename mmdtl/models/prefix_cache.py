"""Frozen-prefix feature cache for DTL backbones.

Blocks ``0..M`` of a DTL backbone are frozen and see no task-specific input,
so for a deterministic training pipeline (VTAB-1k: resize + normalise) their
outputs are the same every epoch. The cache stores what the side network and
block ``M + 1`` need — the inputs of the tapped prefix blocks and the output
of block ``M`` — once per image and skips the prefix forward afterwards.

Entries are keyed by a hash of the image tensor itself, so an image that
comes out of the pipeline differently (random augmentation) can never hit a
stale entry, and every store is tied to the backbone's weight fingerprint: a
different checkpoint clears the memory store and uses another disk folder.
"""
import hashlib
import os
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn

from mmdtl.utils import save_checkpoint_atomic

STORAGES = ('memory', 'device', 'disk')


def check_deterministic_prefix(prefix_blocks, drop_after_pos: nn.Module, start: int) -> None:
    """Refuse a prefix (blocks ``0..M``) whose outputs differ between training
    passes (drop path, dropout), since cached features would then be wrong."""
    stochastic = [i for i, block in enumerate(prefix_blocks) if any(
        getattr(m, 'drop_prob', 0) > 0 or (isinstance(m, nn.Dropout) and m.p > 0)
        for m in block.modules())]
    if stochastic or drop_after_pos.p > 0:
        raise ValueError(
            f'prefix_cache needs a deterministic prefix, but blocks {stochastic} (<= '
            f'csn.start={start}) use drop path/dropout during training; set '
            f'drop_path_rate=0 and drop_rate=0, or remove prefix_cache')


def build_prefix_cache(backbone: nn.Module,
                       cfg: Optional[dict]) -> Optional['PrefixFeatureCache']:
    """The cache of a DTL backbone's ``prefix_cache`` option (None if unset),
    after the backbone's ``_check_cacheable``; loading new weights into the
    backbone clears it."""
    if cfg is None:
        return None
    backbone._check_cacheable()
    cache = PrefixFeatureCache(**cfg)
    # New weights make every cached feature stale.
    backbone.register_load_state_dict_post_hook(
        lambda module, incompatible: module.prefix_cache.clear())
    return cache


def cache_applies(cache: Optional['PrefixFeatureCache'], training: bool,
                  no_grad_prefix: bool) -> bool:
    """Whether a backbone's forward should read its prefix from ``cache``."""
    return (cache is not None and cache.enabled and no_grad_prefix
            and (training or cache.use_in_eval))


class PrefixFeatureCache:
    """Per-image cache of the frozen prefix's features.

    Args:
        storage (str): ``'memory'`` (host RAM), ``'device'`` (the model's
            device, e.g. GPU memory) or ``'disk'``. Defaults to ``'memory'``.
        cache_dir (str, optional): Folder of the disk store; required for
            ``'disk'``. A sub-folder per backbone fingerprint is used.
        dtype (str, optional): Store features as this dtype (e.g.
            ``'float16'`` halves the memory; results then differ within fp16
            rounding). Defaults to None: the dtype they were computed in.
        max_items (int, optional): Stop adding entries beyond this many
            images. Defaults to None (no bound).
        use_in_eval (bool): Also cache in eval mode. Defaults to False:
            validation images are seen once per evaluation only.
    """

    def __init__(self,
                 storage: str = 'memory',
                 cache_dir: Optional[str] = None,
                 dtype: Optional[str] = None,
                 max_items: Optional[int] = None,
                 use_in_eval: bool = False):
        if storage not in STORAGES:
            raise ValueError(f'prefix_cache.storage must be one of {STORAGES}, got {storage!r}')
        if storage == 'disk' and not cache_dir:
            raise ValueError("prefix_cache.cache_dir is required with storage='disk'")
        if dtype is not None and not isinstance(getattr(torch, str(dtype), None), torch.dtype):
            raise ValueError(f'prefix_cache.dtype must name a torch dtype, got {dtype!r}')
        self.storage = storage
        self.cache_dir = cache_dir
        self.dtype = getattr(torch, dtype) if dtype else None
        self.max_items = max_items
        self.use_in_eval = use_in_eval
        self.enabled = True
        self.disabled_reason = None
        self.hits = self.misses = 0
        self._entries: Dict[str, dict] = {}
        self._fingerprint: Optional[str] = None

    # -- state ---------------------------------------------------------------
    def disable(self, reason: str) -> None:
        """Stop using the cache (e.g. the training pipeline is random)."""
        self.enabled = False
        self.disabled_reason = reason
        self.clear()

    def clear(self) -> None:
        """Forget the in-memory entries and the backbone fingerprint."""
        self._entries.clear()
        self._fingerprint = None

    def __len__(self) -> int:
        return len(self._entries) if self.storage != 'disk' else len(self._disk_keys())

    @property
    def nbytes(self) -> int:
        """Memory held by the entries in host or device memory (0 on disk)."""
        return sum(t.nbytes for entry in self._entries.values()
                   for t in (entry['output'], *entry['taps'].values()))

    def fingerprint(self, backbone: torch.nn.Module) -> str:
        if self._fingerprint is None:
            from mmdtl.engine.task_checkpoint import backbone_fingerprint
            self._fingerprint = backbone_fingerprint(backbone)
        return self._fingerprint

    # -- lookup --------------------------------------------------------------
    @staticmethod
    def key(image: torch.Tensor) -> str:
        data = image.detach().contiguous().cpu()
        digest = hashlib.blake2b(digest_size=20)
        digest.update(f'{data.dtype}{tuple(data.shape)}'.encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy())
        return digest.hexdigest()

    def fetch(self, backbone: torch.nn.Module, images: torch.Tensor,
              compute: Callable[[torch.Tensor], Tuple[dict, torch.Tensor, tuple]]
              ) -> Tuple[Dict[int, torch.Tensor], torch.Tensor, tuple]:
        """Prefix features of ``images``, computing (and storing) misses.

        Args:
            backbone (nn.Module): The DTL backbone (for its fingerprint).
            images (Tensor): The batch, (B, 3, H, W).
            compute (callable): ``images -> (tap_inputs, block_m_output,
                grid)`` for a sub-batch, run on a miss.

        Returns:
            tuple: ``tap_inputs`` (block index -> (B, N, C)), the output of
            block M (B, N, C) and the patch grid.
        """
        fingerprint = self.fingerprint(backbone)
        keys = [self.key(img) for img in images]
        entries = [self._get(fingerprint, k) for k in keys]
        missing = [i for i, e in enumerate(entries) if e is None]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            taps, output, grid = compute(images[missing])
            for j, i in enumerate(missing):
                entry = dict(taps={t: v[j] for t, v in taps.items()}, output=output[j],
                             grid=tuple(grid))
                entries[i] = entry
                self._put(fingerprint, keys[i], entry)
        grids = {e['grid'] for e in entries}
        if len(grids) != 1:
            raise ValueError(f'prefix cache: images of one batch have different grids {grids}')
        device, dtype = images.device, images.dtype
        taps = {t: torch.stack([e['taps'][t] for e in entries]).to(device, dtype)
                for t in entries[0]['taps']}
        output = torch.stack([e['output'] for e in entries]).to(device, dtype)
        return taps, output, grids.pop()

    def _stored(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach()
        if self.dtype is not None:
            tensor = tensor.to(self.dtype)
        # clone: a row of a batch would otherwise keep the whole batch alive
        return tensor.clone() if self.storage == 'device' else tensor.cpu().clone()

    def _full(self) -> bool:
        return self.max_items is not None and len(self) >= self.max_items

    def _put(self, fingerprint: str, key: str, entry: dict) -> None:
        if self._full():
            return
        entry = dict(taps={t: self._stored(v) for t, v in entry['taps'].items()},
                     output=self._stored(entry['output']), grid=entry['grid'])
        if self.storage != 'disk':
            self._entries[key] = entry
            return
        save_checkpoint_atomic(
            dict(taps={str(t): v for t, v in entry['taps'].items()},
                 output=entry['output'], grid=list(entry['grid'])),
            os.path.join(self._disk_folder(fingerprint), f'{key}.pt'))

    def _get(self, fingerprint: str, key: str) -> Optional[dict]:
        if self.storage != 'disk':
            return self._entries.get(key)
        path = os.path.join(self._disk_folder(fingerprint), f'{key}.pt')
        if not os.path.exists(path):
            return None
        data = torch.load(path, map_location='cpu', weights_only=True)
        return dict(taps={int(t): v for t, v in data['taps'].items()},
                    output=data['output'], grid=tuple(data['grid']))

    def _disk_folder(self, fingerprint: str) -> str:
        return os.path.join(self.cache_dir, fingerprint[:32])

    def _disk_keys(self):
        if self._fingerprint is None:
            return []
        folder = self._disk_folder(self._fingerprint)
        if not os.path.isdir(folder):
            return []
        return [f for f in os.listdir(folder) if f.endswith('.pt') and not f.startswith('.')]

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.
