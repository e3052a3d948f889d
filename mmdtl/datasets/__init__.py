# Copyright (c) OpenMMLab. All rights reserved.
from .digits_vtab import write_digits_vtab
from .vtab import VTAB1K_GROUPS, VTAB1K_TASKS, VTAB1k

__all__ = ['VTAB1k', 'VTAB1K_TASKS', 'VTAB1K_GROUPS', 'write_digits_vtab']
