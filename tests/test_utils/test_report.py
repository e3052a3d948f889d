"""The one report writer: markdown, CSV, JSON and PNG, each replaced atomically."""
import csv
import json

import pytest

from mmdtl.utils.report import (
    markdown_table,
    new_figure,
    save_figure,
    write_csv,
    write_json,
    write_markdown,
)


def test_markdown_table_from_lists_and_dicts():
    text = markdown_table(['method', 'MB'], [['DTL', 1.5], {'method': 'full', 'MB': 20.25}],
                          fmt=lambda v: f'{v:.1f}')
    assert text == '| method | MB |\n|---|---|\n| DTL | 1.5 |\n| full | 20.2 |\n'


def test_a_short_row_is_refused_naming_the_columns():
    with pytest.raises(ValueError, match=r'1 cells for 2 columns \(method, MB\)'):
        markdown_table(['method', 'MB'], [['DTL']])


def test_csv_round_trips_and_leaves_none_empty(tmp_path):
    path = write_csv(tmp_path / 'sub' / 'r.csv', ['a', 'b'], [[1, None], {'a': 'x', 'b': 2.5}])
    with open(path, newline='') as f:
        assert list(csv.reader(f)) == [['a', 'b'], ['1', ''], ['x', '2.5']]


def test_a_failed_write_keeps_the_previous_report(tmp_path):
    path = tmp_path / 'r.csv'
    write_csv(path, ['a'], [[1]])
    before = path.read_text()

    class Boom:
        def __str__(self):
            raise RuntimeError('killed mid-write')

    with pytest.raises(RuntimeError):
        write_csv(path, ['a'], [[2], [Boom()]])
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ['r.csv']  # no temporary left


def test_markdown_and_png_are_written(tmp_path):
    md = write_markdown(tmp_path / 'r.md', '# title')
    assert open(md).read() == '# title\n'
    fig, ax = new_figure(figsize=(2, 2))
    ax.plot([0, 1], [0, 1])
    png = save_figure(fig, tmp_path / 'r.png')
    assert open(png, 'rb').read(8) == b'\x89PNG\r\n\x1a\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['r.md', 'r.png']


def test_json_is_written_whole_or_not_at_all(tmp_path):
    path = write_json(tmp_path / 'run' / 'result.json', {'top1': 91.5, 'seed': 0})
    assert json.loads(open(path).read()) == {'top1': 91.5, 'seed': 0}
    with pytest.raises(TypeError):  # not JSON: the previous file stays
        write_json(path, {'top1': object()})
    assert json.loads(open(path).read()) == {'top1': 91.5, 'seed': 0}
    assert [p.name for p in (tmp_path / 'run').iterdir()] == ['result.json']
