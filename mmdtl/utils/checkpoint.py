"""Safe checkpoint loading and atomic checkpoint saving for mmengine runners.

Loading
    torch >= 2.6 loads with ``weights_only=True``: only tensors, containers,
    numbers and strings plus an explicit allow-list of globals may be
    unpickled. mmengine 0.10.7's own checkpoints contain a few more globals
    (its ``HistoryBuffer`` in the message hub, the numpy arrays, dtypes and
    scalars inside it), so resuming fails out of the box. Rather than ever
    falling back to ``weights_only=False`` (arbitrary code execution on a
    crafted file), :func:`register_safe_globals` allow-lists exactly those
    globals (found by saving real checkpoints with the Runner and listing what
    the weights-only unpickler rejects) and routes mmengine's local-file
    loading through :func:`safe_torch_load`, which names the file and the
    offending global when it refuses a checkpoint (zip and legacy formats),
    and names the file in one line when it is empty, truncated or not a
    torch checkpoint at all (:class:`UnreadableCheckpointError`). Every file
    it reads is remembered (weakly) so that a frozen backbone that refuses
    the weights can name the file (:mod:`mmdtl.utils.trunk_keys`).

Saving
    mmengine writes a checkpoint (and ``last_checkpoint``) in place, and its
    ``CheckpointHook`` deletes outdated checkpoints *before* writing the new
    one, so a kill during a save can leave no usable checkpoint at all.
    :class:`AtomicCheckpointHook` writes to a temporary file in the same
    folder and ``os.replace``-s it over the target, updates
    ``last_checkpoint`` the same way, and deletes outdated checkpoints only
    once the new one is complete. :func:`save_checkpoint_atomic` does the same
    for a checkpoint dict (tools, converters).
"""
import contextlib
import functools
import hashlib
import os
import os.path as osp
import pickle
import pickletools
import re
import uuid
import zipfile
from typing import IO, Any, Callable, Dict, Iterator, List, Optional, Union

import numpy as np
import torch
from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook
from mmengine.logging import HistoryBuffer
from mmengine.registry import HOOKS
from mmengine.runner.checkpoint import CheckpointLoader

from .trunk_keys import remember_checkpoint

__all__ = [
    'SAFE_GLOBAL_NAMES', 'UnsafeCheckpointError', 'UnreadableCheckpointError',
    'register_safe_globals', 'safe_torch_load', 'unreadable_checkpoint', 'is_unreadable_error',
    'torch_load_reason', 'load_from_local_safe', 'save_checkpoint_atomic', 'AtomicCheckpointHook'
]

# ---------------------------------------------------------------------------
# Safe loading
# ---------------------------------------------------------------------------

# The statistics ``HistoryBuffer`` registers by default. A pickled
# ``HistoryBuffer`` stores them as ``getattr(HistoryBuffer, 'mean')`` etc.
_HISTORY_BUFFER_STATISTICS = ('min', 'max', 'current', 'mean')

# The numpy dtypes whose classes may be rebuilt (HistoryBuffer holds float64
# and int64 arrays; metrics may be any numeric numpy scalar).
_NUMERIC_DTYPES = ('bool', 'int8', 'int16', 'int32', 'int64', 'uint8', 'uint16', 'uint32',
                   'uint64', 'float16', 'float32', 'float64', 'complex64', 'complex128')


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint needs a global that is not on the allow-list.

    Subclasses :class:`pickle.UnpicklingError` so code that already handles
    torch's weights-only failures keeps working.
    """


class UnreadableCheckpointError(ValueError):
    """A checkpoint file is empty, truncated or not a torch checkpoint."""


def _history_buffer_getattr(obj: Any, name: str) -> Any:
    """Stand-in for ``builtins.getattr`` while loading with weights_only.

    mmengine pickles ``HistoryBuffer.statistics_methods`` as
    ``getattr(HistoryBuffer, '<method>')``. Allowing the real ``getattr``
    would let a crafted file reach any attribute of any allowed object, so
    the checkpoint's ``builtins.getattr`` resolves to this function, which
    only returns ``HistoryBuffer``'s own statistics methods.
    """
    allowed = set(_HISTORY_BUFFER_STATISTICS) | set(HistoryBuffer._statistics_methods)
    if (obj is HistoryBuffer and isinstance(name, str) and name in allowed
            and callable(HistoryBuffer.__dict__.get(name))):
        return getattr(obj, name)
    raise pickle.UnpicklingError(
        f'Unsupported global: GLOBAL builtins.getattr used on {obj!r}.{name!r}; '
        'only HistoryBuffer statistics methods may be looked up.')


def _safe_globals() -> List[Union[Callable, tuple]]:
    """The globals an mmengine checkpoint contains, for the numpy installed.

    ``torch.save`` pickles numpy objects by their defining module: under numpy
    2 that is ``numpy._core.multiarray``, under numpy 1 it was
    ``numpy.core.multiarray``. Both spellings are listed (mapped to the same
    installed function) so checkpoints written with either numpy resume.
    """
    try:  # numpy >= 2
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray
    safe: List[Union[Callable, tuple]] = [
        # message_hub: HistoryBuffer objects holding numpy arrays
        HistoryBuffer,
        (_history_buffer_getattr, 'builtins.getattr'),
        # numpy arrays, dtypes and scalars (e.g. np.float64 metrics)
        np.ndarray,
        np.dtype,
    ]
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        safe.append((multiarray._reconstruct, f'{module}._reconstruct'))
        safe.append((multiarray.scalar, f'{module}.scalar'))
    # numpy >= 1.25 gives each dtype its own class (numpy.dtypes.Float64DType
    # ...); unpickling a dtype sets its state, which the weights-only
    # unpickler allows only for allow-listed classes. Numeric kinds only: no
    # object, string or void dtypes.
    safe.extend(dict.fromkeys(type(np.dtype(t)) for t in _NUMERIC_DTYPES))
    return safe


#: Names (as written in the pickle) that :func:`register_safe_globals` allows
#: on top of torch's own weights-only allow-list (tensors, OrderedDict, ...).
SAFE_GLOBAL_NAMES = (
    'mmengine.logging.history_buffer.HistoryBuffer',
    'builtins.getattr',  # restricted to HistoryBuffer statistics methods
    'numpy.ndarray',
    'numpy.dtype',
    'numpy.core.multiarray._reconstruct',
    'numpy._core.multiarray._reconstruct',
    'numpy.core.multiarray.scalar',
    'numpy._core.multiarray.scalar',
) + tuple(f'{type(np.dtype(t)).__module__}.{type(np.dtype(t)).__qualname__}'
          for t in _NUMERIC_DTYPES)

_registered = False


def register_safe_globals() -> None:
    """Allow-list mmengine's checkpoint globals and use the safe local loader.

    Idempotent; called on ``import mmdtl``. It

    - adds :data:`SAFE_GLOBAL_NAMES` to torch's weights-only allow-list;
    - registers :func:`load_from_local_safe` as mmengine's loader for local
      paths (``CheckpointLoader`` scheme ``''``). Every local load in mmengine
      (``Runner.resume``, ``load_from``, ``init_cfg=dict(type='Pretrained')``,
      ``load_checkpoint``) goes through this scheme, so overriding it is the
      narrowest point that covers them all without patching mmengine code;
    - wraps the other registered schemes (http, open-mmlab, ...) so that
      their refusals carry the same clear message. They call ``torch.load``
      with torch's default, which is ``weights_only=True`` since torch 2.6.
    """
    global _registered
    if _registered:
        return
    torch.serialization.add_safe_globals(_safe_globals())
    CheckpointLoader.register_scheme(prefixes='', loader=load_from_local_safe, force=True)
    for prefix, loader in list(CheckpointLoader._schemes.items()):
        if prefix != '' and not getattr(loader, '_mmdtl_safe', False):
            CheckpointLoader.register_scheme(
                prefixes=prefix, loader=_with_clear_refusal(loader), force=True)
    _registered = True


def _legacy_pickle_globals(file: Any) -> List[str]:
    """Globals named by the pickles of a legacy (non-zip) ``torch.save`` file.

    That format is a few pickles back to back (magic number, protocol, system
    info, the object, the storage keys) followed by raw storage bytes; they
    are disassembled, never executed, until the first that does not parse.
    """
    names: List[str] = []
    try:
        with open(file, 'rb') as f:
            for _ in range(5):
                strings: List[str] = []
                memo: Dict[Any, Any] = {}
                for opcode, arg, _pos in pickletools.genops(f):
                    if opcode.name == 'GLOBAL':
                        names.append(arg.replace(' ', '.'))
                    elif opcode.name == 'STACK_GLOBAL' and len(strings) >= 2:
                        names.append(f'{strings[-2]}.{strings[-1]}')
                    elif isinstance(arg, str) and 'UNICODE' in opcode.name:
                        strings.append(arg)
                    elif opcode.name in ('BINPUT', 'LONG_BINPUT', 'MEMOIZE') and strings:
                        memo[arg if arg is not None else len(memo)] = strings[-1]
                    elif opcode.name in ('BINGET', 'LONG_BINGET') and arg in memo:
                        strings.append(memo[arg])
    except Exception:  # the raw storage bytes after the last pickle
        pass
    try:
        from torch import _weights_only_unpickler as wou
        safe = set(wou._get_allowed_globals()) | set(wou._get_user_allowed_globals())
    except Exception:  # private torch API: report every non-torch global
        safe = {n for n in names if n.startswith(('torch.', 'collections.OrderedDict'))}
    return [n for n in names if n not in safe]


def _offending_globals(text: str, file: Any) -> List[str]:
    """The disallowed globals, from torch's message or the file's pickle."""
    names = re.findall(r'GLOBAL ([\w.]+)', text)
    if not names and isinstance(file, (str, os.PathLike)):
        try:
            names = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(file))
        except Exception:  # legacy (non-zip) format
            names = _legacy_pickle_globals(file)
    return list(dict.fromkeys(names))


# Sentences of torch's weights-only message that advise weights_only=False
# (arbitrary code execution on a crafted file): never repeated to users.
_TORCH_ADVICE = re.compile(r'weights_only|will likely succeed|trusted source|file an issue|'
                           r'Weights only load failed', re.IGNORECASE)


def torch_load_reason(error: BaseException) -> str:
    """Why ``torch.load`` failed, in one line, without torch's advice to
    re-run with ``weights_only=False``."""
    text = str(error).split('WeightsUnpickler error:', 1)[-1]
    for line in text.splitlines():
        sentences = [s for s in re.split(r'(?<=\.)\s+', line.strip())
                     if s and not _TORCH_ADVICE.search(s)]
        if sentences:
            return ' '.join(sentences)[:200]
    return ''


def _refusal(file: Any, error: BaseException) -> UnsafeCheckpointError:
    """Build the error that names the file and the offending global(s)."""
    text = str(error)
    names = _offending_globals(text, file)
    what = (f'the pickled global(s) {", ".join(names)}, not on the allow-list'
            if names else
            f'a pickle construct weights-only loading forbids '
            f'({torch_load_reason(error) or type(error).__name__})')
    return UnsafeCheckpointError(
        f'Refusing to load checkpoint {file}: it contains {what}. Checkpoints are loaded '
        'with weights_only=True and may only hold tensors, containers, numbers, strings '
        'and the mmengine/numpy types in mmdtl.utils.checkpoint.SAFE_GLOBAL_NAMES. If you '
        'trust the file and the global is plain data, allow it explicitly with '
        'torch.serialization.add_safe_globals().')


# What torch raises for a file that is cut short or not a checkpoint at all.
_UNREADABLE = re.compile(r'PytorchStreamReader|inline_container|unexpected EOF|corrupt|'
                         r'magic number|zip archive|central directory|hasRecord')


def is_unreadable_error(error: BaseException, file: Any = None) -> bool:
    """Whether ``torch.load`` failed because ``file`` is empty, cut short or
    not a torch checkpoint (rather than refusing a global)."""
    if isinstance(error, (EOFError, KeyError, UnicodeDecodeError)):
        return True
    if isinstance(file, (str, os.PathLike)) and osp.isfile(file):
        with open(file, 'rb') as f:
            head = f.read(2)
        # torch.save writes a zip archive, or (legacy) a protocol-2 pickle.
        if not head.startswith((b'PK', b'\x80')):
            return True
    if isinstance(error, pickle.UnpicklingError):
        # invalid load key, truncated data: not a refused global
        return not re.search(r'GLOBAL|[Gg]lobal|Unsupported|allowlist', str(error))
    return isinstance(error, RuntimeError) and bool(_UNREADABLE.search(str(error)))


def unreadable_checkpoint(file: Any, error: BaseException) -> UnreadableCheckpointError:
    """The one-line error for an empty, truncated or foreign checkpoint file."""
    size = osp.getsize(file) if isinstance(file, (str, os.PathLike)) and osp.isfile(file) \
        else None
    if size == 0:
        what = 'the file is empty (0 bytes)'
    elif size is not None and zipfile.is_zipfile(file) and any(
            name.endswith('.npy') for name in zipfile.ZipFile(file).namelist()):
        what = ('it is a NumPy .npz archive, not a torch checkpoint (Google\'s ViT '
                'weights?): convert it with tools/model_converters/vit_npz_to_mmpretrain.py')
    else:
        # torch's first sentence (without its weights-only preamble)
        reason = torch_load_reason(error).split('. ')[0][:120]
        reason = f'{type(error).__name__}: {reason}' if reason else type(error).__name__
        bytes_text = f'{size:,} bytes, ' if size is not None else ''
        what = (f'it is truncated or not a torch checkpoint ({bytes_text}{reason}); '
                're-download or re-save it')
    return UnreadableCheckpointError(f'Cannot read checkpoint {file}: {what}.')


def safe_torch_load(file: Any,
                    map_location: Any = None,
                    source: Optional[str] = None) -> Any:
    """``torch.load`` with ``weights_only=True`` and a clear refusal.

    Args:
        file (str | PathLike | file-like): What to load.
        map_location: Same as :func:`torch.load`.
        source (str, optional): Name of the file for error messages, when
            ``file`` is a buffer. Defaults to None (use ``file``).

    Raises:
        UnsafeCheckpointError: The checkpoint needs a global that is not on
            the allow-list; the message names the file and the global.
        UnreadableCheckpointError: The file is empty, truncated or not a
            torch checkpoint; one line naming the file.
    """
    register_safe_globals()
    try:
        # Explicit True: TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD cannot override it.
        obj = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as e:
        if is_unreadable_error(e, file):
            raise unreadable_checkpoint(source or file, e) from None
        if isinstance(e, pickle.UnpicklingError):
            raise _refusal(source or file, e) from None
        raise
    if source is not None or isinstance(file, (str, os.PathLike)):
        remember_checkpoint(obj, str(source or file))
    return obj


def load_from_local_safe(filename: str, map_location: Any = None) -> Any:
    """mmengine ``CheckpointLoader`` scheme for local paths, weights-only.

    Args:
        filename (str): Local checkpoint path.
        map_location: Same as :func:`torch.load`.

    Returns:
        dict: The loaded checkpoint.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(
            f'checkpoint {filename} can not be found (cwd: {os.getcwd()}); pre-trained '
            f'backbones are made by tools/model_converters/ (see README)')
    return safe_torch_load(filename, map_location=map_location)


load_from_local_safe._mmdtl_safe = True  # type: ignore[attr-defined]


def _with_clear_refusal(loader: Callable) -> Callable:
    """Wrap a scheme loader so weights-only refusals name file and global."""

    @functools.wraps(loader)  # keeps __name__: mmengine logs it
    def wrapped(filename, map_location=None, *args, **kwargs):
        try:
            obj = loader(filename, map_location, *args, **kwargs)
        except (UnsafeCheckpointError, UnreadableCheckpointError):
            raise
        except Exception as e:
            if is_unreadable_error(e, filename):
                raise unreadable_checkpoint(filename, e) from None
            if isinstance(e, pickle.UnpicklingError):
                raise _refusal(filename, e) from None
            raise
        remember_checkpoint(obj, filename)
        return obj

    wrapped._mmdtl_safe = True  # type: ignore[attr-defined]
    return wrapped


# ---------------------------------------------------------------------------
# Atomic saving
# ---------------------------------------------------------------------------


def _tmp_path(path: str) -> str:
    """A unique hidden temporary name next to ``path`` (same filesystem)."""
    head, tail = osp.split(path)
    return osp.join(head, f'.{tail}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp')


def _fsync_dir(dirname: str) -> None:
    """Persist a rename (best effort: not every OS/filesystem supports it)."""
    try:
        fd = os.open(dirname or '.', os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _commit(tmp: str, path: str) -> None:
    """Flush ``tmp`` to disk and atomically move it over ``path``."""
    with open(tmp, 'rb') as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(osp.dirname(path))


def _remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def save_checkpoint_atomic(checkpoint: Any, filename: str) -> None:
    """``torch.save`` to a local file so that readers never see a partial file.

    The object is serialised into a temporary file in the same folder, which
    then replaces ``filename`` with ``os.replace`` (atomic on POSIX and
    Windows). If serialisation fails or the process dies midway, the previous
    ``filename`` is untouched.

    Args:
        checkpoint: The object to save (usually a dict).
        filename (str): Target path; its folder is created if needed.
    """
    filename = osp.abspath(osp.expanduser(filename))
    os.makedirs(osp.dirname(filename), exist_ok=True)
    tmp = _tmp_path(filename)
    try:
        # 'xb' respects the umask (unlike mkstemp's 0600) and never clobbers.
        with open(tmp, 'xb') as f:
            torch.save(checkpoint, f)
        _commit(tmp, filename)
    except BaseException:
        _remove_quietly(tmp)
        raise


def file_sha256(path: str) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_open(path: str, mode: str = 'w', **kwargs) -> Iterator[IO]:
    """Open a temporary file next to ``path``; it replaces ``path`` only once
    the ``with`` block ends without an error (a kill leaves the old file).

    Args:
        path (str): The file to write.
        mode (str): ``'w'`` (text) or ``'wb'`` (binary).
        **kwargs: Passed to :func:`open` (``encoding``, ``newline``).
    """
    if mode not in ('w', 'wb'):
        raise ValueError(f"atomic_open: mode must be 'w' or 'wb', not {mode!r}")
    tmp = _tmp_path(path)
    try:
        # 'x' respects the umask (unlike mkstemp's 0600) and never clobbers.
        with open(tmp, mode.replace('w', 'x'), **kwargs) as f:
            yield f
        _commit(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise


def write_text_atomic(path: str, text: str) -> None:
    """Atomically replace a text file (``last_checkpoint``, reports)."""
    with atomic_open(path, 'w', encoding='utf-8') as f:
        f.write(text)


class _AtomicSaveRunner:
    """Forwards to a runner, but ``save_checkpoint`` writes atomically.

    Lets :class:`AtomicCheckpointHook` reuse the parent's best-checkpoint
    logic unchanged instead of copying it.
    """

    def __init__(self, runner, save_fn: Callable):
        self.__dict__.update(_runner=runner, _save_fn=save_fn)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runner, name)

    def save_checkpoint(self, out_dir: str, filename: str, *args, **kwargs) -> None:
        self._save_fn(self._runner, out_dir, filename, *args, **kwargs)


class _DeferredRemoval:
    """Forwards to a file backend but queues ``remove``/``rmtree`` calls."""

    def __init__(self, backend, queue: List[tuple]):
        self.__dict__.update(_backend=backend, _queue=queue)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def remove(self, path: str) -> None:
        self._queue.append((self._backend.remove, path))

    def rmtree(self, path: str) -> None:
        self._queue.append((self._backend.rmtree, path))


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """A :class:`~mmengine.hooks.CheckpointHook` that never loses a checkpoint.

    Same arguments and behaviour as ``CheckpointHook``, except that on a local
    ``out_dir``

    - each checkpoint is written to a hidden temporary file in the same folder
      and moved over its final name with ``os.replace``;
    - ``last_checkpoint`` is replaced atomically, after the checkpoint it
      names is complete;
    - outdated checkpoints (``max_keep_ckpts``) and the previous best
      checkpoint (``save_best``) are deleted only after the new one is saved.

    A kill at any moment therefore leaves the previous checkpoint and a
    ``last_checkpoint`` that points at a complete file (at worst a stale
    hidden ``.*.tmp`` file remains). Other storage backends fall back to the
    parent's behaviour. Registered in mmengine's root ``HOOKS`` so configs of
    any scope (mmpretrain, mmdet) can say ``type='AtomicCheckpointHook'``.
    """

    def _is_local(self) -> bool:
        backend = getattr(self, 'file_backend', None)
        backend = getattr(backend, '_backend', backend)  # unwrap _DeferredRemoval
        return isinstance(backend, LocalBackend)

    def _save_atomic(self, runner, out_dir: str, filename: str, *args, **kwargs) -> None:
        """``runner.save_checkpoint`` into a temp file, then replace."""
        head, tail = osp.split(filename)
        tmp_name = osp.join(head, osp.basename(_tmp_path(tail)))
        tmp, path = osp.join(out_dir, tmp_name), osp.join(out_dir, filename)
        try:
            # Runner.save_checkpoint is master-only: other ranks write nothing.
            runner.save_checkpoint(out_dir, tmp_name, *args, **kwargs)
            if is_main_process():
                _commit(tmp, path)
        except BaseException:
            if is_main_process():
                _remove_quietly(tmp)
            raise

    def _save_checkpoint_with_step(self, runner, step, meta) -> None:
        if not self._is_local():
            return super()._save_checkpoint_with_step(runner, step, meta)
        runner = getattr(runner, '_runner', runner)  # unwrap _AtomicSaveRunner

        # Same bookkeeping as the parent, but the outdated checkpoint is only
        # deleted after the new one is complete (the parent deletes first,
        # which with max_keep_ckpts=1 leaves nothing during the save).
        outdated = None
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids
                                            and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                outdated = self.keep_ckpt_ids.popleft()
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))

        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)

        self._save_atomic(
            runner,
            self.out_dir,
            ckpt_filename,
            self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler,
            meta=meta,
            by_epoch=self.by_epoch,
            backend_args=self.backend_args,
            **self.args)

        if not is_main_process():
            return
        write_text_atomic(osp.join(runner.work_dir, 'last_checkpoint'), self.last_ckpt)

        if outdated is not None:
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(outdated))
            if self.file_backend.isfile(path):
                self.file_backend.remove(path)
            elif self.file_backend.isdir(path):
                self.file_backend.rmtree(path)

    def _save_best_checkpoint(self, runner, metrics: Dict[str, Any]) -> None:
        if not self._is_local():
            return super()._save_best_checkpoint(runner, metrics)
        # The parent deletes the previous best before saving the new one:
        # queue the deletions and run them only once the save succeeded.
        backend, queue = self.file_backend, []
        self.file_backend = _DeferredRemoval(backend, queue)
        try:
            super()._save_best_checkpoint(_AtomicSaveRunner(runner, self._save_atomic), metrics)
        finally:
            self.file_backend = backend
        current = {getattr(self, 'best_ckpt_path', None), self.last_ckpt,
                   *getattr(self, 'best_ckpt_path_dict', {}).values()}
        for remove, path in queue:
            if path not in current:  # never delete a file that was just written
                remove(path)
