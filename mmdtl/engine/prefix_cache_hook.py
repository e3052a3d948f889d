"""Switch the frozen-prefix cache off when the training pipeline is random."""
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmpretrain.registry import HOOKS

# Transforms whose output differs between epochs for the same image.
RANDOM_TRANSFORM_MARKERS = ('Random', 'RandAugment', 'AutoAugment', 'TrivialAugment', 'Mixup',
                            'CutMix', 'ColorJitter', 'GaussianBlur', 'Lighting', 'Albu',
                            'Albumentations')


def random_transforms(pipeline) -> list:
    """Names of the transforms of ``pipeline`` (a list of configs or a
    ``Compose``) that make its output random."""
    transforms = getattr(pipeline, 'transforms', pipeline) or []
    names = []
    for transform in transforms:
        name = transform.get('type') if isinstance(transform, dict) else type(transform).__name__
        name = name if isinstance(name, str) else getattr(name, '__name__', str(name))
        if any(marker in name for marker in RANDOM_TRANSFORM_MARKERS):
            names.append(name)
    return names


@HOOKS.register_module()
class PrefixCacheHook(Hook):
    """Guards and reports the frozen-prefix feature cache of a DTL backbone.

    Before training it inspects the training pipeline and the data
    preprocessor's batch augmentations; if any is random, cached features
    would never be reused, so the cache is disabled (and says why) before
    it holds anything. After every epoch it logs the cache size and hit
    rate. Without the hook, or for a random transform it does not know, the
    cache's own reuse check (see :class:`PrefixFeatureCache`) switches it
    off after the second epoch. Add it with::

        custom_hooks = [dict(type='PrefixCacheHook')]
    """

    priority = 'NORMAL'

    @staticmethod
    def _cache(runner):
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        return getattr(getattr(model, 'backbone', None), 'prefix_cache', None), model

    def before_train(self, runner) -> None:
        cache, model = self._cache(runner)
        if cache is None:
            runner.logger.warning('PrefixCacheHook: the backbone has no prefix_cache; '
                                  'nothing to do')
            return
        dataset = runner.train_dataloader.dataset
        random = random_transforms(getattr(dataset, 'pipeline', []))
        preprocessor = getattr(model, 'data_preprocessor', None)
        if getattr(preprocessor, 'batch_augments', None) is not None:
            random.append('batch_augments')
        if random:
            cache.disable(f'the training pipeline is random ({", ".join(random)})')
            runner.logger.warning(f'Prefix cache disabled: {cache.disabled_reason}')
        else:
            runner.logger.info(f'Prefix cache on ({cache.storage}): blocks 0..M are computed '
                               f'once per image and reused in later epochs')

    def after_train_epoch(self, runner) -> None:
        cache, _ = self._cache(runner)
        if cache is not None and cache.enabled:
            runner.logger.info(f'Prefix cache: {len(cache)} images, hit rate '
                               f'{100 * cache.hit_rate:.1f}% so far')
