"""Refuse semantic-segmentation label maps that do not fit the dataset."""
import os.path as osp

import numpy as np
from mmcv.transforms import BaseTransform
from mmseg.registry import TRANSFORMS
from PIL import Image

# PIL modes of label files that hold one class index per pixel in 8 bits.
_EIGHT_BIT_MODES = ('1', 'L', 'P')


@TRANSFORMS.register_module()
class CheckSegLabels(BaseTransform):
    """Raise on a label map with classes the dataset does not have.

    mmseg trains on whatever a label file holds: a class index at or above
    the number of classes ends in an index error inside the loss on CPU and a
    device-side assert (which names nothing) on GPU, and evaluation simply
    drops such pixels from the IoU. A 16-bit label file is even cut to 8 bits
    by mmseg's ``LoadAnnotations`` (300 becomes 44) without a word. Put this
    transform right after ``LoadAnnotations`` in the training and test
    pipelines; it raises a ``ValueError`` naming the file, the values out of
    range and the allowed ones.

    Allowed after loading: ``0 .. num_classes - 1`` and ``ignore_index``.
    With ``reduce_zero_label=True`` (ADE20K) the file itself may hold 0
    (ignored), ``1 .. num_classes`` and 255 (ignored). The label map must
    also be one channel (class indices, not a colour palette rendered to RGB)
    of the image's size.

    Required keys: ``gt_seg_map``, ``seg_map_path``. Optional keys:
    ``reduce_zero_label``, ``label_map``, ``ori_shape``. Modified keys: none.

    Args:
        num_classes (int): The classes of the dataset (of the decode head).
        ignore_index (int): The label that marks pixels to ignore, as the
            decode head's ``ignore_index``. Defaults to 255.
        check_bit_depth (bool): Also read the header of a local label file
            and decode a 16/32-bit one in full, to catch classes above 255
            that ``LoadAnnotations`` wraps into range. Defaults to True.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255,
                 check_bit_depth: bool = True) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f'CheckSegLabels: num_classes must be a positive int (the classes '
                             f'of the dataset), got {num_classes!r}.')
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise ValueError(f'CheckSegLabels: ignore_index must be an int, got '
                             f'{ignore_index!r}.')
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.check_bit_depth = check_bit_depth

    def transform(self, results: dict) -> dict:
        """Check ``results['gt_seg_map']``; return ``results`` unchanged.

        Inference has no label map (``MMSegInferencer`` drops
        ``LoadAnnotations``, not this check): nothing to check then.
        """
        if 'gt_seg_map' not in results:
            return results
        seg = results['gt_seg_map']
        path = results.get('seg_map_path', '<no seg_map_path>')
        if seg.ndim != 2:
            raise ValueError(
                f'CheckSegLabels: label file {path} has {seg.shape[-1]} channels (shape '
                f'{tuple(seg.shape)}): mmseg expects one class index per pixel. A colour '
                'rendering of the classes must be converted to a single-channel index PNG '
                '(mode L or P).')
        ori_shape = results.get('ori_shape')
        if ori_shape is not None and tuple(seg.shape) != tuple(ori_shape[:2]):
            raise ValueError(
                f'CheckSegLabels: label file {path} is {seg.shape[1]}x{seg.shape[0]} px but its '
                f'image {results.get("img_path", "")} is {ori_shape[1]}x{ori_shape[0]} px; '
                'the label map must have the size of its image.')
        if self.check_bit_depth:
            self._check_wide_file(path, results)
        bad = ((seg >= self.num_classes) | (seg < 0)) & (seg != self.ignore_index)
        if bad.any():
            values = np.unique(seg[bad])
            raise ValueError(self._message(path, values, results))
        return results

    def _allowed(self, reduce_zero_label: bool) -> str:
        if reduce_zero_label:
            return (f'0 (ignored), 1-{self.num_classes} for the {self.num_classes} classes and '
                    f'255 (ignored), as the dataset sets reduce_zero_label=True')
        return (f'0-{self.num_classes - 1} for the {self.num_classes} classes and '
                f'{self.ignore_index} (ignore_index)')

    def _message(self, path: str, values: np.ndarray, results: dict) -> str:
        reduce = bool(results.get('reduce_zero_label'))
        remapped = results.get('label_map') is not None
        if reduce and not remapped:
            # LoadAnnotations subtracted 1; name the values as they are in the file.
            shown, where = values.astype(np.int64) + 1, 'holds class values'
        else:
            shown = values
            where = 'holds class values (after the dataset\'s label_map)' if remapped \
                else 'holds class values'
        listed = ', '.join(str(int(v)) for v in shown[:10])
        more = f' and {len(shown) - 10} more' if len(shown) > 10 else ''
        allowed = self._allowed(reduce and not remapped)
        return (f'CheckSegLabels: label file {path} {where} [{listed}{more}] out of range; '
                f'allowed: {allowed}. Fix or re-convert this label file, or set num_classes '
                f'(now {self.num_classes}) to that of the dataset.')

    def _check_wide_file(self, path: str, results: dict) -> None:
        """Catch values above 255 in a 16/32-bit file (mmseg wraps them)."""
        if not isinstance(path, str) or not osp.isfile(path):
            return
        try:
            with Image.open(path) as image:
                if image.mode in _EIGHT_BIT_MODES or image.mode.startswith('RGB'):
                    return
                raw = np.asarray(image)
        except OSError:
            return  # LoadAnnotations decoded it; nothing more to learn here
        if raw.size and raw.max() > 255:
            values = np.unique(raw[(raw > 255) & (raw != self.ignore_index)])
            listed = ', '.join(str(int(v)) for v in values[:10])
            more = f' and {len(values) - 10} more' if len(values) > 10 else ''
            allowed = self._allowed(bool(results.get('reduce_zero_label')))
            raise ValueError(
                f'CheckSegLabels: label file {path} ({image.mode}, more than 8 bits) holds class '
                f'values [{listed}{more}] above 255, which mmseg\'s LoadAnnotations silently '
                f'wraps into 0-255; allowed: {allowed}. Re-convert it to an 8-bit index PNG.')

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(num_classes={self.num_classes}, '
                f'ignore_index={self.ignore_index}, check_bit_depth={self.check_bit_depth})')
