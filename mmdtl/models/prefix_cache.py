"""Frozen-prefix feature cache for DTL backbones.

Blocks ``0..M`` of a DTL backbone are frozen and see no task-specific input,
so for a deterministic training pipeline (VTAB-1k: resize + normalise) their
outputs are the same every epoch. The cache stores what the side network and
block ``M + 1`` need — the inputs of the tapped prefix blocks and the output
of block ``M`` — once per image and skips the prefix forward afterwards.

What an entry depends on, and so what it is keyed by (a cache must never
serve features of another prefix, since a frozen trunk cannot recover):

- the image: a hash of the image tensor itself (bytes, dtype and shape), so
  an image that comes out of the pipeline differently (random augmentation,
  another resize) never hits a stale entry;
- the *settings key* of every store (the memory stores hold entries of one
  key at a time, the disk store uses one sub-folder of ``cache_dir`` per
  key), a hash of:

  * the backbone weights (:func:`mmdtl.engine.backbone_fingerprint`: every
    trunk tensor with its dtype and shape, the side network excluded);
  * ``csn.start`` and the taps ``<= csn.start`` (whose inputs are stored);
  * how the prefix computes (:func:`prefix_settings`): the type and plain
    settings of every prefix module (heads, eps, window and shift sizes,
    patch stride and padding, ...) and the backbone's position-embedding
    settings (``img_size``, ``interpolate_mode``, cls token, ...);
  * the stored dtype (``prefix_cache.dtype``) and the autocast dtype the
    prefix runs under (fp32 and bf16 features are different entries);
  * :data:`PREFIX_CACHE_VERSION`, bumped whenever the prefix's math or the
    entry layout changes in this code, so disk caches of older code miss.

Not keyed, because they change at most the float rounding of the same math:
the device and kernels (CPU/GPU, ``pack_frozen_weights``), the torch
version, the batch an image comes in. Options after block ``M`` (out_type,
out_indices, checkpoint_suffix, the side network's other settings) do not
touch an entry.

An unreadable disk entry (truncated, empty, not a cache entry) is reported
in one warning line naming the file, deleted and recomputed. Temporary
files of saves that were interrupted (``.*.tmp``, older than
:data:`STALE_TMP_SECONDS`) are removed when the cache is built.
"""
import hashlib
import logging
import numbers
import os
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.logging import MessageHub, print_log

from mmdtl.utils import save_checkpoint_atomic

STORAGES = ('memory', 'device', 'disk')

#: Bump when what the cached prefix computes, or what an entry holds, changes
#: in this code: entries of an older version then miss instead of hitting.
#: 1: the first release (keyed by the weights only); 2: full settings key.
PREFIX_CACHE_VERSION = 2

#: A ``.*.tmp`` file in ``cache_dir`` older than this (seconds) is a left-over
#: of an interrupted save: a live save writes one entry in far less time.
STALE_TMP_SECONDS = 60

#: The reuse check (see :class:`PrefixFeatureCache`): images of the second
#: epoch looked at, and the least fraction of them that must hit.
REUSE_CHECK_IMAGES = 64
REUSE_MIN_HIT_RATE = 0.05

#: Backbone attributes (of mmpretrain's VisionTransformer / SwinTransformer)
#: that change what the prefix computes but live outside its modules.
PREFIX_BACKBONE_SETTINGS = ('img_size', 'patch_resolution', 'interpolate_mode',
                            'with_cls_token', 'num_extra_tokens', 'use_abs_pos_embed',
                            'pad_small_map')
# Module attributes that never change a module's output.
_NEUTRAL_ATTRS = ('training', 'init_cfg', 'with_cp', 'inplace')


def build_prefix_cache(backbone: nn.Module,
                       cfg: Optional[dict]) -> Optional['PrefixFeatureCache']:
    """The cache of a DTL backbone's ``prefix_cache`` option (None if unset);
    loading new weights into the backbone clears it."""
    if cfg is None:
        return None
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


def _plain(value):
    """``value`` as a plain, printable setting, or None if it is not one."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):  # numpy floats print differently
        return float(value)
    if isinstance(value, (tuple, list)):
        items = [_plain(v) for v in value]
        return None if any(i is None and v is not None for i, v in zip(items, value)) \
            else tuple(items)
    return None


def prefix_settings(backbone: nn.Module) -> List[str]:
    """Everything besides the weights that decides the prefix features of a
    DTL backbone: its class, ``csn.start``, the stored taps, the backbone
    settings of :data:`PREFIX_BACKBONE_SETTINGS`, and the type and plain
    attributes (numbers, strings, tuples of them) of every module of
    ``backbone.dtl_runner.prefix_modules()``."""
    start = backbone.csn.start
    items = [type(backbone).__name__, f'start={start}',
             f'taps={[t for t in backbone.csn.taps if t <= start]}']
    items += [f'{name}={_plain(getattr(backbone, name, None))!r}'
              for name in PREFIX_BACKBONE_SETTINGS]
    for index, module in enumerate(backbone.dtl_runner.prefix_modules()):
        for name, sub in module.named_modules():
            attrs = {k: _plain(v) for k, v in sorted(vars(sub).items())
                     if not k.startswith('_') and k not in _NEUTRAL_ATTRS
                     and (v is None or _plain(v) is not None)}
            kind = f'{type(sub).__module__}.{type(sub).__qualname__}'
            items.append(f'{index}.{name}:{kind}{attrs!r}')
    return items


def _train_epoch() -> Optional[int]:
    """The epoch mmengine's runner is training (None outside a runner)."""
    return MessageHub.get_current_instance().get_info('epoch')


def _load_failure(path: str, exc: BaseException) -> str:
    """Why torch.load failed on a cache entry, in one short line."""
    try:
        size = os.path.getsize(path)
    except OSError:
        size = None
    if size == 0:
        return 'empty file'
    if isinstance(exc, PermissionError):
        return _one_line(exc)
    return f'{size} bytes, truncated or not written by torch.save: {_one_line(exc)}'


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    text = text[0] if text else ''
    text = text if len(text) <= 120 else text[:117] + '...'
    return f'{type(exc).__name__}: {text}' if text else type(exc).__name__


class PrefixFeatureCache:
    """Per-image cache of the frozen prefix's features.

    See the module docstring for what an entry is keyed by. Entries of the
    memory stores belong to one settings key: a different key (new weights,
    autocast switched on) empties them. The disk store keeps one sub-folder
    of ``cache_dir`` per key and reuses it across runs.

    Reuse check: cached features pay off only if images come back
    identical, so inside an mmengine runner the cache watches itself. It
    counts the lookups of the first training epoch it serves and the share
    of them it stored (its *coverage*); in the next epoch, after
    ``min(REUSE_CHECK_IMAGES, first-epoch lookups)`` lookups, it requires a
    hit rate of at least ``REUSE_MIN_HIT_RATE`` times the coverage (5 % of a
    full cache). Below that the training pipeline re-augments every image
    (random crops and the like), so the cache disables itself with a warning
    instead of filling memory or disk with entries that are never hit. A
    pipeline with a few variants per image (a random flip: about 50 %, and
    rising) or a per-rank memory store under DDP (about ``1 / world size``)
    stays cached. The check runs once, with or without
    :class:`PrefixCacheHook` (which refuses known random transforms before
    training); outside a runner, or in iteration-based loops, it never runs.

    Args:
        storage (str): ``'memory'`` (host RAM), ``'device'`` (the model's
            device, e.g. GPU memory) or ``'disk'``. Defaults to ``'memory'``.
        cache_dir (str, optional): Folder of the disk store; required for
            ``'disk'``. A sub-folder per settings key is used.
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
        self._settings: Optional[str] = None  # hash of everything but autocast
        self._store_key: Optional[str] = None  # key of the current store
        self._write_failed = False
        # The reuse check: first epoch served, its lookups and stored
        # entries; lookups and hits of the next epoch.
        self._first_epoch: Optional[int] = None
        self._first = dict(lookups=0, stored=0)
        self._next = dict(lookups=0, hits=0)
        self._reuse_checked = False
        if storage == 'disk':
            self._remove_stale_tmp()

    # -- state ---------------------------------------------------------------
    def disable(self, reason: str) -> None:
        """Stop using the cache (e.g. the training pipeline is random)."""
        self.enabled = False
        self.disabled_reason = reason
        self.clear()

    def clear(self) -> None:
        """Forget the in-memory entries and the settings key (the disk store
        keeps its files: they are found again under the same key)."""
        self._entries.clear()
        self._settings = None
        self._store_key = None

    def __len__(self) -> int:
        return len(self._entries) if self.storage != 'disk' else len(self._disk_keys())

    @property
    def nbytes(self) -> int:
        """Memory held by the entries in host or device memory (0 on disk)."""
        return sum(t.nbytes for entry in self._entries.values()
                   for t in (entry['output'], *entry['taps'].values()))

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.

    # -- keys ----------------------------------------------------------------
    def settings_key(self, backbone: nn.Module, device_type: str = 'cpu') -> str:
        """The key of the store that serves ``backbone`` now (hex digest):
        weights, prefix settings, stored and autocast dtype, code version.
        Computed once per loaded weights (hashing them is the slow part)."""
        if self._settings is None:
            from mmdtl.engine.task_checkpoint import backbone_fingerprint
            digest = hashlib.sha256()
            for item in (f'version={PREFIX_CACHE_VERSION}',
                         f'weights={backbone_fingerprint(backbone)}',
                         f'stored_dtype={self.dtype}', *prefix_settings(backbone)):
                digest.update(item.encode('utf-8') + b'\0')
            self._settings = digest.hexdigest()
        autocast = (torch.get_autocast_dtype(device_type)
                    if torch.is_autocast_enabled(device_type) else None)
        return hashlib.sha256(f'{self._settings}\0autocast={autocast}'.encode()).hexdigest()

    @staticmethod
    def image_key(image: torch.Tensor) -> str:
        """Hash of an image tensor: its bytes, dtype and shape."""
        data = image.detach().contiguous().cpu()
        digest = hashlib.blake2b(digest_size=20)
        digest.update(f'{data.dtype}{tuple(data.shape)}'.encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy())
        return digest.hexdigest()

    # -- lookup --------------------------------------------------------------
    def fetch(self, backbone: torch.nn.Module, images: torch.Tensor,
              compute: Callable[[torch.Tensor], Tuple[dict, torch.Tensor, tuple]]
              ) -> Tuple[Dict[int, torch.Tensor], torch.Tensor, tuple]:
        """Prefix features of ``images``, computing (and storing) misses.

        Args:
            backbone (nn.Module): The DTL backbone (for the settings key).
            images (Tensor): The batch, (B, 3, H, W).
            compute (callable): ``images -> (tap_inputs, block_m_output,
                grid)`` for a sub-batch, run on a miss.

        Returns:
            tuple: ``tap_inputs`` (block index -> (B, N, C)), the output of
            block M (B, N, C) and the patch grid.
        """
        store_key = self.settings_key(backbone, images.device.type)
        if store_key != self._store_key:
            self._entries.clear()  # the memory stores hold one key at a time
            self._store_key = store_key
        taps = tuple(t for t in backbone.csn.taps if t <= backbone.csn.start)
        keys = [self.image_key(img) for img in images]
        entries = [self._get(k, taps) for k in keys]
        missing = [i for i, e in enumerate(entries) if e is None]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        stored = 0
        if missing:
            tap_inputs, output, grid = compute(images[missing])
            for j, i in enumerate(missing):
                entry = dict(taps={t: v[j] for t, v in tap_inputs.items()}, output=output[j],
                             grid=tuple(grid))
                entries[i] = entry
                stored += self._put(keys[i], entry)
        self._check_reuse(len(keys), len(keys) - len(missing), stored)
        grids = {e['grid'] for e in entries}
        if len(grids) != 1:
            raise ValueError(f'prefix cache: images of one batch have different grids {grids}')
        # Features come back in the dtype they were computed in (under autocast
        # a block may return bf16), so a hit equals the plain prefix bit for
        # bit; a lossy storage dtype is cast back to the images' dtype.
        device = images.device
        dtype = images.dtype if self.dtype is not None else None
        tap_inputs = {t: torch.stack([e['taps'][t] for e in entries]).to(device, dtype)
                      for t in entries[0]['taps']}
        output = torch.stack([e['output'] for e in entries]).to(device, dtype)
        return tap_inputs, output, grids.pop()

    def _stored(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach()
        if self.dtype is not None:
            tensor = tensor.to(self.dtype)
        # clone: a row of a batch would otherwise keep the whole batch alive
        return tensor.clone() if self.storage == 'device' else tensor.cpu().clone()

    def _full(self) -> bool:
        return self.max_items is not None and len(self) >= self.max_items

    def _put(self, key: str, entry: dict) -> bool:
        """Store ``entry``; False if the cache is full or the write failed."""
        if not self.enabled or self._full():
            return False
        entry = dict(taps={t: self._stored(v) for t, v in entry['taps'].items()},
                     output=self._stored(entry['output']), grid=entry['grid'])
        if self.storage != 'disk':
            self._entries[key] = entry
            return True
        path = self._disk_path(key)
        try:
            save_checkpoint_atomic(
                dict(taps={str(t): v for t, v in entry['taps'].items()},
                     output=entry['output'], grid=list(entry['grid'])), path)
        except OSError as e:  # disk full, folder removed: a cache write is optional
            if not self._write_failed:
                self._write_failed = True
                print_log(f'prefix cache: cannot write {path} ({_one_line(e)}); images '
                          f'whose features cannot be written are recomputed',
                          logger='current', level=logging.WARNING)
            return False
        return True

    def _get(self, key: str, taps: tuple) -> Optional[dict]:
        if self.storage != 'disk':
            return self._entries.get(key)
        path = self._disk_path(key)
        try:
            data = torch.load(path, map_location='cpu', weights_only=True)
        except FileNotFoundError:
            return None
        except Exception as e:  # truncated, empty, foreign: recompute, never crash
            return self._drop_unreadable(path, _load_failure(path, e))
        try:
            return self._from_disk(data, taps)
        except ValueError as e:
            return self._drop_unreadable(path, str(e))

    @staticmethod
    def _drop_unreadable(path: str, reason: str) -> None:
        print_log(f'prefix cache: {path} is unreadable ({reason}); it is deleted and '
                  f'recomputed', logger='current', level=logging.WARNING)
        try:
            os.remove(path)
        except OSError:
            pass

    @staticmethod
    def _from_disk(data, taps: tuple) -> dict:
        """An entry from a loaded file, checked to hold what this prefix stores."""
        if (not isinstance(data, dict) or set(data) != {'taps', 'output', 'grid'}
                or not isinstance(data['taps'], dict)
                or not all(isinstance(t, str) and t.isdigit() for t in data['taps'])):
            raise ValueError('not a prefix-cache entry')
        stored = {int(t): v for t, v in data['taps'].items()}
        tensors = [data['output'], *stored.values()]
        grid = data['grid']
        if set(stored) != set(taps):
            raise ValueError(f'holds the inputs of blocks {sorted(stored)}, this prefix '
                             f'stores {list(taps)}')
        # Per image: tokens (N, C), or a map (C, H, W) for convolutional trunks.
        if not (all(isinstance(t, torch.Tensor) and t.dim() in (2, 3) for t in tensors)
                and isinstance(grid, list) and len(grid) == 2):
            raise ValueError('malformed prefix-cache entry')
        return dict(taps=stored, output=data['output'], grid=tuple(grid))

    # -- disk ----------------------------------------------------------------
    def _disk_folder(self) -> str:
        return os.path.join(self.cache_dir, self._store_key[:32])

    def _disk_path(self, key: str) -> str:
        return os.path.join(self._disk_folder(), f'{key}.pt')

    def _disk_keys(self) -> List[str]:
        if self._store_key is None:
            return []
        folder = self._disk_folder()
        if not os.path.isdir(folder):
            return []
        return [f for f in os.listdir(folder) if f.endswith('.pt') and not f.startswith('.')]

    def _remove_stale_tmp(self) -> None:
        """Delete the temporary files that interrupted atomic saves left."""
        if not os.path.isdir(self.cache_dir):
            return
        now, removed = time.time(), 0
        for folder, _, files in os.walk(self.cache_dir):
            for name in files:
                if not (name.startswith('.') and name.endswith('.tmp')):
                    continue
                path = os.path.join(folder, name)
                try:  # another rank may remove it at the same time
                    if now - os.stat(path).st_mtime > STALE_TMP_SECONDS:
                        os.remove(path)
                        removed += 1
                except OSError:
                    pass
        if removed:
            print_log(f'prefix cache: removed {removed} temporary file(s) of interrupted '
                      f'saves from {self.cache_dir}', logger='current', level=logging.INFO)

    # -- reuse check ---------------------------------------------------------
    def _check_reuse(self, lookups: int, hits: int, stored: int) -> None:
        """Disable a cache whose second epoch does not reuse the first (see
        the class docstring for the rule)."""
        if self._reuse_checked or not self.enabled:
            return
        epoch = _train_epoch()
        if epoch is None:
            return
        if self._first_epoch is None:
            self._first_epoch = epoch
        if epoch == self._first_epoch:
            self._first['lookups'] += lookups
            self._first['stored'] += stored
            return
        self._next['lookups'] += lookups
        self._next['hits'] += hits
        seen, hit = self._next['lookups'], self._next['hits']
        if seen < min(REUSE_CHECK_IMAGES, self._first['lookups']):
            return
        self._reuse_checked = True
        coverage = self._first['stored'] / max(self._first['lookups'], 1)
        if hit >= REUSE_MIN_HIT_RATE * min(coverage, 1.) * seen:
            return
        self.disable(
            f'only {hit} of the first {seen} images of epoch {epoch + 1} ({hit / seen:.0%}) '
            f'were cached in epoch {self._first_epoch + 1}, so the training pipeline '
            f'changes the images every epoch (random augmentation)')
        print_log(f'Prefix cache disabled: {self.disabled_reason}; caching them would only '
                  f'fill {self.storage} with features that are never reused. Remove '
                  f'prefix_cache from the config or make the pipeline deterministic.',
                  logger='current', level=logging.WARNING)
