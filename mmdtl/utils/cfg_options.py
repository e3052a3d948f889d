"""``--cfg-options KEY=VALUE ...`` for tools that build their own commands."""
from typing import Sequence


def parse_cfg_options(options: Sequence[str]) -> dict:
    """Parse ``KEY=VALUE`` strings as mmengine's ``DictAction`` does (values
    may be lists or tuples), into a dict for ``Config.merge_from_dict``.

    Args:
        options (Sequence[str]): The ``KEY=VALUE`` strings.

    Returns:
        dict: Key -> parsed value.
    """
    from mmengine.config import DictAction

    parsed = {}
    for kv in options:
        key, value = kv.split('=', 1)
        parsed[key] = DictAction._parse_iterable(value)
    return parsed
