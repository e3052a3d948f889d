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
