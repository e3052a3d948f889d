"""One writer for every tool's report: markdown, CSV, JSON and PNG, each atomic.

A tool builds its rows (a header and lists, or dicts keyed by column) and
hands them here, so that every report is written the same way: a kill while
writing leaves the previous file, never half a table.
"""
import csv
import json
import os
import os.path as osp
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from .checkpoint import atomic_open, write_text_atomic

Row = Union[Sequence[Any], Mapping[str, Any]]


def _cells(row: Row, header: Sequence[str]) -> list:
    if isinstance(row, Mapping):
        return [row.get(column, '') for column in header]
    if len(row) != len(header):
        raise ValueError(f'a row has {len(row)} cells for {len(header)} columns '
                         f'({", ".join(map(str, header))}): {list(row)!r}')
    return list(row)


def markdown_table(header: Sequence[str], rows: Sequence[Row],
                   fmt: Callable[[Any], str] = str) -> str:
    """A GitHub markdown table; ``fmt`` turns a cell into text.

    Args:
        header (Sequence[str]): Column names.
        rows (Sequence[Row]): Lists in header order, or dicts keyed by column
            (missing columns are empty).
        fmt (Callable): Formats a cell that is not already a string.
    """
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for row in rows:
        lines.append('| ' + ' | '.join(
            cell if isinstance(cell, str) else fmt(cell) for cell in _cells(row, header)) + ' |')
    return '\n'.join(lines) + '\n'


def write_markdown(path: str, text: str) -> str:
    """Write a markdown report atomically (the folder is created); returns ``path``."""
    _make_parent(path)
    write_text_atomic(str(path), text if text.endswith('\n') else text + '\n')
    return str(path)


def write_csv(path: str, header: Sequence[str], rows: Sequence[Row],
              fmt: Optional[Callable[[Any], Any]] = None) -> str:
    """Write a CSV atomically; ``None`` cells are empty. Returns ``path``.

    Args:
        path (str): The file to write.
        header (Sequence[str]): Column names, the first line.
        rows (Sequence[Row]): Lists in header order or dicts keyed by column.
        fmt (Callable, optional): Applied to every cell that is not ``None``.
    """
    _make_parent(path)
    with atomic_open(str(path), 'w', newline='', encoding='utf-8') as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row in rows:
            writer.writerow(['' if cell is None else (fmt(cell) if fmt else cell)
                             for cell in _cells(row, header)])
    return str(path)


def write_json(path: str, obj: Any, indent: int = 2) -> str:
    """Write ``obj`` as JSON atomically (the folder is created); returns ``path``.

    A tool that skips finished work when its JSON exists (``results.json`` of
    a suite's run, ``result.json`` of a demo run) never sees half a file.

    Args:
        path (str): The file to write.
        obj: What :func:`json.dump` accepts.
        indent (int): Indentation of the JSON text. Defaults to 2.
    """
    _make_parent(path)
    with atomic_open(str(path), 'w', encoding='utf-8') as f:
        json.dump(obj, f, indent=indent)
    return str(path)


def save_figure(fig, path: str, dpi: int = 120) -> str:
    """Save a matplotlib figure atomically and close it; returns ``path``."""
    import matplotlib.pyplot as plt
    _make_parent(path)
    fmt = osp.splitext(str(path))[1].lstrip('.') or 'png'
    try:
        with atomic_open(str(path), 'wb') as f:
            fig.savefig(f, format=fmt, dpi=dpi)
    finally:
        plt.close(fig)
    return str(path)


def new_figure(*args, **kwargs):
    """``plt.subplots`` on the Agg backend (no display needed)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt.subplots(*args, **kwargs)


def _make_parent(path: str) -> None:
    parent = osp.dirname(str(path))
    if parent:
        os.makedirs(parent, exist_ok=True)
