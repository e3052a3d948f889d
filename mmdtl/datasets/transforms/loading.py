"""Image decoding: as the DTL release does it (PIL, RGB, no EXIF rotation),
mmcv's loader with errors that name the file, and grey images from colour
input for grey models."""
import io
import os
import os.path as osp
from typing import Optional

import mmcv
import mmengine.fileio as fileio
import numpy as np
from mmcv.transforms import BaseTransform
from mmcv.transforms import LoadImageFromFile as MMCVLoadImageFromFile
from mmpretrain.registry import TRANSFORMS
from PIL import Image

_CHECK = 'replace or remove it (tools/check_data.py checks every image of a data root)'


def _first_line(error: BaseException) -> str:
    text = (str(error).strip().splitlines() or [''])[0][:200]
    return f'{type(error).__name__}: {text}' if text else type(error).__name__


def read_error(owner: str, filename, error: BaseException) -> OSError:
    """The file could not be read (missing, no permission, backend error)."""
    return OSError(f'{owner}: cannot read image {filename}: {_first_line(error)}')


def empty_error(owner: str, filename) -> OSError:
    return OSError(f'{owner}: image file {filename} is empty (0 bytes); {_CHECK}.')


def decode_error(owner: str, filename, size: Optional[int], reason: str) -> OSError:
    """The bytes were read but are not an image (cut short, another format)."""
    size_text = f' ({size} bytes)' if size is not None else ''
    return OSError(f'{owner}: cannot decode image {filename}{size_text}: {reason}; {_CHECK}.')


@TRANSFORMS.register_module()
class LoadImageFromFilePIL(MMCVLoadImageFromFile):
    """Load an image the way torchvision's ``default_loader`` does.

    The DTL release reads every image with ``default_loader``:
    ``PIL.Image.open(path).convert('RGB')``, which ignores the EXIF
    orientation tag and turns every mode (L, LA, P, RGBA, CMYK, I;16, ...)
    into RGB with PIL's own conversion. mmcv's ``LoadImageFromFile`` differs:
    its default cv2 backend (and ``color_type='color'`` with the pillow
    backend) rotates by the EXIF tag, cv2's JPEG decoder is not PIL's, and
    an ``LA`` image is composited on a grey canvas. This transform decodes
    with PIL exactly as the release, so that (with mmcv's ``Resize``,
    ``backend='pillow'``) the pixels fed to the model are the release's.

    A missing, empty (0 bytes) or undecodable file raises an ``OSError``
    that names the file, in the main process or re-raised from a dataloader
    worker.

    A result without ``img_path`` that already holds an ``img`` array is
    passed through with the array as it is (only ``to_float32`` applies):
    mmpretrain's ``ImageClassificationInferencer`` removes only transforms
    named ``LoadImageFromFile`` from the test pipeline and hands the rest
    the arrays it decoded (paths: mmcv's ``imread``, cv2, BGR) or was
    given. Such an array must be in this loader's channel order (BGR by
    default, as mmcv and the inferencer give it).

    Required keys: ``img_path`` (or ``img``). Added keys: ``img``,
    ``img_shape``, ``ori_shape``.

    Args:
        to_float32 (bool): Return a float32 array instead of uint8.
            Defaults to False.
        channel_order (str): ``'bgr'`` (mmcv's convention, which the
            data preprocessor's ``to_rgb=True`` and mmpretrain's colour
            transforms expect) or ``'rgb'``. Defaults to ``'bgr'``.
        ignore_empty (bool): Return None for a file that cannot be read
            instead of raising (mmengine's datasets then draw another
            sample while training). Defaults to False.
        backend_args (dict, optional): Arguments of mmengine's file backend
            (e.g. for Petrel or HTTP). Defaults to None (local files).
    """

    def __init__(self,
                 to_float32: bool = False,
                 channel_order: str = 'bgr',
                 ignore_empty: bool = False,
                 backend_args: Optional[dict] = None) -> None:
        if channel_order not in ('bgr', 'rgb'):
            raise ValueError(f'{type(self).__name__}: channel_order must be \'bgr\' or '
                             f'\'rgb\', got {channel_order!r}.')
        super().__init__(to_float32=to_float32, color_type='color_ignore_orientation',
                         imdecode_backend='pillow', ignore_empty=ignore_empty,
                         backend_args=backend_args)
        self.channel_order = channel_order

    def transform(self, results: dict) -> Optional[dict]:
        """Read ``results['img_path']`` into ``results['img']``.

        Args:
            results (dict): The result dict with ``img_path``, or with an
                ``img`` array decoded before the pipeline.

        Returns:
            dict | None: The result dict with the image, or None for an
            unreadable file with ``ignore_empty=True``.
        """
        filename = results.get('img_path')
        if filename is None:
            return self._decoded(results)
        try:
            img = self._decode(filename)
        except OSError:
            if self.ignore_empty:
                return None
            raise
        return self._store(results, img)

    def _decoded(self, results: dict) -> dict:
        """An image decoded before the pipeline (an inference API): kept."""
        img = results.get('img')
        if not isinstance(img, np.ndarray):
            raise KeyError(f'{type(self).__name__}: the result has neither an img_path to '
                           f'read nor an img array (keys: {sorted(results)}).')
        return self._store(results, img)

    def _store(self, results: dict, img: np.ndarray) -> dict:
        if self.to_float32:
            img = img.astype(np.float32)
        results['img'] = img
        results['img_shape'] = img.shape[:2]
        results['ori_shape'] = img.shape[:2]
        return results

    def _decode(self, filename) -> np.ndarray:
        owner = type(self).__name__
        try:
            img_bytes = fileio.get(filename, backend_args=self.backend_args)
        except Exception as e:
            raise read_error(owner, filename, e) from e
        if not img_bytes:
            raise empty_error(owner, filename)
        try:
            with Image.open(io.BytesIO(img_bytes)) as image:
                image = image.convert('RGB')  # as torchvision's default_loader
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ...
            raise decode_error(owner, filename, len(img_bytes), _first_line(e)) from e
        img = np.asarray(image)
        if self.channel_order == 'bgr':
            img = img[..., ::-1]
        return np.ascontiguousarray(img)

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(to_float32={self.to_float32}, '
                f'channel_order={self.channel_order!r}, ignore_empty={self.ignore_empty}, '
                f'backend_args={self.backend_args})')


class LoadImageFromFile(MMCVLoadImageFromFile):
    """mmcv's ``LoadImageFromFile``, with errors that name the file.

    Decodes exactly as mmcv's loader (same arguments: ``color_type``,
    ``imdecode_backend``, ``to_float32``, ``ignore_empty``, ...), but a
    missing, empty (0 bytes) or undecodable file raises an ``OSError``
    naming the file and what to do, instead of cv2's ``!buf.empty() in
    function 'imdecode_'`` or an ``AssertionError``.

    Registered under mmcv's own name in mmpretrain's registry (and in
    mmdet's and mmseg's, where installed; see
    ``mmdtl/datasets/transforms/__init__.py``), so that configs keep
    ``type='LoadImageFromFile'``: mmpretrain's
    ``ImageClassificationInferencer`` and mmdet's/mmseg's inference APIs find
    and replace the loader by that name.
    """

    def transform(self, results: dict) -> Optional[dict]:
        """Read ``results['img_path']`` into ``results['img']``.

        Args:
            results (dict): The result dict with ``img_path``.

        Returns:
            dict | None: The result dict with the image, or None for an
            unreadable file with ``ignore_empty=True``.
        """
        try:
            return super().transform(results)
        except Exception as e:  # ignore_empty=True returned None above
            raise self._error(results.get('img_path'), e) from e

    def _error(self, filename, error: BaseException) -> OSError:
        owner = type(self).__name__
        local = isinstance(filename, (str, os.PathLike)) and self.backend_args is None \
            and self.file_client_args is None
        if isinstance(error, OSError) or (local and not osp.isfile(filename)):
            return read_error(owner, filename, error)
        size = osp.getsize(filename) if local else None
        if size == 0:
            return empty_error(owner, filename)
        if isinstance(error, AssertionError):  # mmcv: the decoder returned None
            reason = f'{self.imdecode_backend} could not decode it'
        else:
            reason = _first_line(error)
        return decode_error(owner, filename, size, reason)


@TRANSFORMS.register_module()
class ToGrayscale(BaseTransform):
    """Make ``results['img']`` one channel, as a grey loader gives it.

    Configs of grey models (the demo's 1-channel ViT) read their images with
    ``LoadImageFromFile(color_type='grayscale')``, which gives 2-D arrays;
    this transform leaves those unchanged, so training and testing see the
    same tensors with or without it. It serves the inference APIs, which
    bypass that loader: mmpretrain's ``ImageClassificationInferencer``
    decodes a path in colour itself (mmcv's ``imread``: B = G = R for a grey
    file) and hands arrays on as given. A 3-channel image is converted with
    mmcv's ``bgr2gray`` / ``rgb2gray`` (cv2, ITU-R BT.601 weights), which
    returns the grey value exactly where the three channels are equal: a
    grey image reaches the model bit for bit as the grey loader reads it.
    (A colour file can differ: the grey loader takes the grey that cv2's
    PNG decoder makes (off by one level here and there) or the JPEG's own
    luma plane (off by more).)

    Required keys: ``img``. Modified keys: ``img`` (2-D for 3-channel
    input; 2-D and ``(H, W, 1)`` input is unchanged).

    Args:
        channel_order (str): Order of a 3-channel input, ``'bgr'`` (mmcv's
            and the inferencers' convention) or ``'rgb'``. Defaults to
            ``'bgr'``.
    """

    def __init__(self, channel_order: str = 'bgr') -> None:
        if channel_order not in ('bgr', 'rgb'):
            raise ValueError(f'{type(self).__name__}: channel_order must be \'bgr\' or '
                             f'\'rgb\', got {channel_order!r}.')
        self.channel_order = channel_order

    def transform(self, results: dict) -> dict:
        """Convert ``results['img']`` to one channel if it has three.

        Args:
            results (dict): The result dict with ``img``.

        Returns:
            dict: The result dict.
        """
        img = results['img']
        if img.ndim == 2 or (img.ndim == 3 and img.shape[2] == 1):
            return results
        if img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(
                f'{type(self).__name__}: expected a grey (H, W) or {self.channel_order.upper()} '
                f'(H, W, 3) image, got shape {tuple(img.shape)} '
                f'({results.get("img_path") or "an array"}); drop the alpha channel first.')
        if img.dtype not in (np.uint8, np.uint16, np.float32):
            raise ValueError(f'{type(self).__name__}: cannot convert a {img.dtype} image; '
                             'give uint8, uint16 or float32.')
        convert = mmcv.bgr2gray if self.channel_order == 'bgr' else mmcv.rgb2gray
        results['img'] = convert(np.ascontiguousarray(img))
        return results

    def __repr__(self) -> str:
        return f'{type(self).__name__}(channel_order={self.channel_order!r})'


def register_loader(registry) -> None:
    """Make ``type='LoadImageFromFile'`` build :class:`LoadImageFromFile`
    in ``registry`` (mmpretrain's, mmdet's, mmseg's transforms)."""
    registry.register_module(name='LoadImageFromFile', module=LoadImageFromFile, force=True)


register_loader(TRANSFORMS)
