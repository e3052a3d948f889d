from .digits_vtab import write_digits_vtab
from .vtab import VTAB1K_GROUPS, VTAB1K_TASKS, VTAB1k

__all__ = ['VTAB1k', 'VTAB1K_TASKS', 'VTAB1K_GROUPS', 'write_digits_vtab']
from .domain_generalization import DG_SUBSET_TARGETS, DG_TARGETS, DomainGeneralization  # noqa: E402
from .few_shot import FEW_SHOT_DATASETS, FewShotFGVC, FewShotRunner  # noqa: E402
from .transforms import LoadImageFromFilePIL  # noqa: E402

__all__ += [
    'FewShotFGVC', 'FewShotRunner', 'FEW_SHOT_DATASETS', 'DomainGeneralization', 'DG_TARGETS',
    'DG_SUBSET_TARGETS', 'LoadImageFromFilePIL'
]
from .dense_scenes import (  # noqa: E402
    DENSE_SCENES_CLASSES,
    DENSE_SCENES_SEG_CLASSES,
    DenseScenesError,
    write_dense_scenes,
)

__all__ += ['DENSE_SCENES_CLASSES', 'DENSE_SCENES_SEG_CLASSES', 'DenseScenesError',
            'write_dense_scenes']

# The dense scenes' dataset classes register in mmdet's / mmseg's registries;
# each only where its library is installed (a broken install still raises).
import importlib.util  # noqa: E402

if importlib.util.find_spec('mmdet') is not None:
    from .dense_scenes_datasets import DenseScenesCocoDataset  # noqa: F401
    __all__.append('DenseScenesCocoDataset')
if importlib.util.find_spec('mmseg') is not None:
    from .dense_scenes_datasets import DenseScenesSegDataset  # noqa: F401
    __all__.append('DenseScenesSegDataset')
