"""mmdet and mmseg datasets of the dense scenes (:mod:`mmdtl.datasets.dense_scenes`).

Each class is defined only when its library is installed, so mmdtl keeps
working without mmseg (or mmdet). Both check their files when they load
(``check_annotations=True``) and raise :class:`DenseScenesError` naming the
file, the annotation and the fix, instead of training on scenes whose
annotations do not match their images.
"""
import importlib.util
import os.path as osp

from .dense_scenes import (
    DENSE_SCENES_CLASSES,
    DENSE_SCENES_PALETTE,
    DENSE_SCENES_SEG_CLASSES,
    DenseScenesError,
    check_coco_scenes,
    check_seg_pair,
    format_problems,
)

__all__ = []


def _root_of(path: str, levels: int) -> str:
    """The scene folder a file or folder ``levels`` below it belongs to."""
    for _ in range(levels):
        path = osp.dirname(osp.normpath(path))
    return path or '.'


if importlib.util.find_spec('mmdet') is not None:
    from mmdet.datasets import CocoDataset
    from mmdet.registry import DATASETS as MMDET_DATASETS

    @MMDET_DATASETS.register_module()
    class DenseScenesCocoDataset(CocoDataset):
        """The dense scenes' COCO instances (mmdet).

        A :class:`mmdet.datasets.CocoDataset` with the 20 classes of
        :data:`DENSE_SCENES_CLASSES` (category ids 1..20 in that order). A
        config reads a split with::

            dict(type='DenseScenesCocoDataset', data_root='data/dense-scenes',
                 ann_file='annotations/instances_train.json',
                 data_prefix=dict(img='img_dir/train/'), ...)

        The images are 1-channel PNGs: use
        ``LoadImageFromFile(color_type='grayscale')`` for a 1-channel trunk.

        Args:
            check_annotations (bool): Before loading, check every image and
                annotation of ``ann_file`` (image size, bbox inside the
                image and equal to the tight box of the mask, mask size,
                category, area; see
                :func:`mmdtl.datasets.dense_scenes.check_coco_scenes`) and
                raise :class:`DenseScenesError` listing what does not match.
                Defaults to True.
            *args: Arguments of :class:`mmdet.datasets.CocoDataset`.
            **kwargs: Keyword arguments of :class:`mmdet.datasets.CocoDataset`.
        """

        METAINFO = dict(classes=DENSE_SCENES_CLASSES, palette=DENSE_SCENES_PALETTE[1:])

        def __init__(self, *args, check_annotations: bool = True, **kwargs):
            self.check_annotations = check_annotations
            super().__init__(*args, **kwargs)

        def load_data_list(self):
            """Check the files (if asked), then load them as CocoDataset does."""
            if self.check_annotations:
                problems = check_coco_scenes(self.ann_file, self.data_prefix.get('img', ''))
                if problems:
                    raise DenseScenesError(format_problems(
                        type(self).__name__, problems, _root_of(self.ann_file, 2)))
            return super().load_data_list()

    __all__.append('DenseScenesCocoDataset')


if importlib.util.find_spec('mmseg') is not None:
    from mmseg.datasets import BaseSegDataset
    from mmseg.registry import DATASETS as MMSEG_DATASETS

    @MMSEG_DATASETS.register_module()
    class DenseScenesSegDataset(BaseSegDataset):
        """The dense scenes' semantic segmentation (mmseg).

        Label maps hold 0 for background and 1..20 for the classes of
        :data:`DENSE_SCENES_CLASSES` (so ``classes`` are
        :data:`DENSE_SCENES_SEG_CLASSES`, 21 of them, and
        ``reduce_zero_label`` must stay False). A config reads a split with::

            dict(type='DenseScenesSegDataset', data_root='data/dense-scenes',
                 data_prefix=dict(img_path='img_dir/train',
                                  seg_map_path='ann_dir/train'), ...)

        Args:
            img_suffix (str): Suffix of the images. Defaults to ``'.png'``.
            seg_map_suffix (str): Suffix of the label maps. Defaults to
                ``'.png'``.
            reduce_zero_label (bool): Must be False (0 is the background
                class here). Defaults to False.
            check_annotations (bool): After listing the images, check that
                every label map exists, has its image's size and holds only
                values in ``[0, 21)`` or ``ignore_index``; raise
                :class:`DenseScenesError` naming the files and the bad
                values otherwise. Defaults to True.
            **kwargs: Other arguments of :class:`mmseg.datasets.BaseSegDataset`.
        """

        METAINFO = dict(classes=DENSE_SCENES_SEG_CLASSES, palette=DENSE_SCENES_PALETTE)

        def __init__(self,
                     img_suffix: str = '.png',
                     seg_map_suffix: str = '.png',
                     reduce_zero_label: bool = False,
                     check_annotations: bool = True,
                     **kwargs):
            if reduce_zero_label:
                raise ValueError(
                    f'{type(self).__name__}: reduce_zero_label=True would turn the background '
                    'class (label 0) into ignore and shift the 20 object classes; the dense '
                    'scenes need reduce_zero_label=False.')
            self.check_annotations = check_annotations
            super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix,
                             reduce_zero_label=reduce_zero_label, **kwargs)

        def load_data_list(self):
            """List the images as BaseSegDataset does, then check them (if asked)."""
            owner = type(self).__name__
            img_dir = self.data_prefix.get('img_path', '')
            root = _root_of(img_dir, 2)
            if not self.ann_file and not osp.isdir(img_dir):
                raise DenseScenesError(format_problems(
                    owner, [f'image folder {img_dir} does not exist.'], root))
            data_list = super().load_data_list()
            if not self.check_annotations:
                return data_list
            if not data_list:
                raise DenseScenesError(format_problems(
                    owner, [f'no *{self.img_suffix} images in {img_dir}.'], root))
            problems = []
            for info in data_list:
                if info.get('seg_map_path') is None:
                    problems.append(f'{info["img_path"]}: no seg_map_path (set '
                                    'data_prefix.seg_map_path to the ann_dir of the split).')
                    break
                problems += check_seg_pair(info['img_path'], info['seg_map_path'],
                                           len(DENSE_SCENES_SEG_CLASSES), self.ignore_index)
            if problems:
                raise DenseScenesError(format_problems(owner, problems, root))
            return data_list

    __all__.append('DenseScenesSegDataset')
