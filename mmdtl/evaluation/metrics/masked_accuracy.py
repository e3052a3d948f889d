from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import torch
from mmengine.evaluator import BaseMetric
from mmpretrain.registry import METRICS


@METRICS.register_module()
class MaskedAccuracy(BaseMetric):
    """Top-1 accuracy over all classes and over a class subset.

    A test set that covers only some of the classes the head predicts (e.g.
    ImageNet-A and ImageNet-R: 200 of ImageNet's 1000 classes) is usually
    scored with the argmax restricted to its own classes: the logits of the
    other classes are masked out. This metric reports both numbers,
    ``top1`` (argmax over all classes) and ``top1_masked`` (argmax over the
    subset).

    With ``group_key`` the samples are split by a metainfo field (e.g.
    ``'domain'`` of :class:`mmdtl.datasets.DomainGeneralization`, which
    needs ``'domain'`` in ``PackInputs.meta_keys``) and every group is scored
    on its own: ``<group>/top1`` and, where the group has a subset,
    ``<group>/top1_masked``.

    The subsets come from ``class_subsets`` / ``class_subset`` when given,
    else from ``dataset_meta['class_subsets']`` (``{group: classes or
    None}``, set by the dataset).

    Args:
        group_key (str, optional): Metainfo field naming the group of a
            sample. Defaults to None (one group).
        class_subsets (dict, optional): ``{group: class indices}``. Defaults
            to None.
        class_subset (Sequence[int], optional): The subset when there is one
            group. Defaults to None.
        collect_device (str): Device used to collect results across ranks,
            ``'cpu'`` or ``'gpu'``. Defaults to ``'cpu'``.
        prefix (str, optional): Prefix of the metric names. Defaults to
            ``'accuracy'``.
    """
    default_prefix: Optional[str] = 'accuracy'

    def __init__(self,
                 group_key: Optional[str] = None,
                 class_subsets: Optional[Dict[str, Sequence[int]]] = None,
                 class_subset: Optional[Sequence[int]] = None,
                 collect_device: str = 'cpu',
                 prefix: Optional[str] = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        if class_subset is not None and group_key is not None:
            raise ValueError('MaskedAccuracy: class_subset is for one group; with group_key '
                             'give class_subsets={group: classes}.')
        self.group_key = group_key
        self.class_subsets = dict(class_subsets or {})
        self.class_subset = None if class_subset is None else list(class_subset)
        self._index_cache = {}

    def _subset(self, group: Optional[str], num_classes: int) -> Optional[torch.Tensor]:
        if group in self._index_cache:
            return self._index_cache[group]
        if group is None:
            subset = self.class_subset
            if subset is None:
                meta = (self.dataset_meta or {}).get('class_subsets') or {}
                # One test set: its subset, whatever the dataset calls it.
                subset = next(iter(meta.values())) if len(meta) == 1 else None
        elif group in self.class_subsets:
            subset = self.class_subsets[group]
        else:
            subset = ((self.dataset_meta or {}).get('class_subsets') or {}).get(group)
        index = None
        if subset is not None:
            index = torch.as_tensor(sorted({int(c) for c in subset}), dtype=torch.long)
            if index.numel() == 0 or index.min() < 0 or index.max() >= num_classes:
                raise ValueError(f'MaskedAccuracy: the class subset of {group or "the set"} '
                                 f'must be non-empty indices in [0, {num_classes}).')
        self._index_cache[group] = index
        return index

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        """Keep the two predictions of every sample (not its scores).

        Args:
            data_batch: A batch of data from the dataloader.
            data_samples (Sequence[dict]): A batch of outputs from the model.
        """
        for sample in data_samples:
            if 'pred_score' not in sample:
                raise KeyError('MaskedAccuracy needs class scores (pred_score) to mask them.')
            group = None
            if self.group_key is not None:
                if self.group_key not in sample:
                    raise KeyError(
                        f'MaskedAccuracy: a data sample has no {self.group_key!r} field; add '
                        f'{self.group_key!r} to PackInputs(meta_keys=...) of the test pipeline.')
                group = sample[self.group_key]
            score = sample['pred_score'].detach().cpu().float()
            gt = int(sample['gt_label'].reshape(-1)[0])
            pred = int(score.argmax())
            index = self._subset(group, score.numel())
            masked = -1 if index is None else int(index[score[index].argmax()])
            self.results.append((group, gt, pred, masked))

    def compute_metrics(self, results: List) -> Dict[str, float]:
        """Accuracy (%) per group.

        Args:
            results (list): ``(group, gt, pred, masked pred)`` per sample.

        Returns:
            dict: ``top1`` / ``top1_masked``, prefixed by ``<group>/`` with a
            group key.
        """
        groups = OrderedDict()
        order = list((self.dataset_meta or {}).get('domains') or [])
        for group in order:
            groups[group] = []
        for group, gt, pred, masked in results:
            groups.setdefault(group, []).append((gt, pred, masked))
        metrics = {}
        for group, rows in groups.items():
            if not rows:
                continue
            name = '' if group is None else f'{group}/'
            metrics[f'{name}top1'] = 100. * sum(p == g for g, p, _ in rows) / len(rows)
            if rows[0][2] >= 0:
                metrics[f'{name}top1_masked'] = 100. * sum(m == g for g, _, m in rows) / len(rows)
        return metrics
