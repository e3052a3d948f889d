"""README.md and docs/: no dead relative link or anchor, no repository file
named that does not exist, and the README stays short."""
import glob
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / 'README.md'] + sorted((REPO / 'docs').glob('*.md'))
LINK = re.compile(r'\[[^\]]*\]\(([^)\s]+)\)')
# a repository path: a known top-level folder, then path characters; globs allowed
PATH = re.compile(r'(?<![\w./-])((?:tools|configs|mmdtl|docs|tests|checkpoints)/[\w./*+\-]*)')


def anchors(page: Path) -> set:
    """GitHub's heading anchors of a markdown page."""
    found = set()
    in_code = False
    for line in page.read_text().splitlines():
        if line.startswith('```'):
            in_code = not in_code
        if in_code or not line.startswith('#'):
            continue
        title = line.lstrip('#').strip().lower()
        slug = re.sub(r'[^\w\- ]', '', title).replace(' ', '-')
        found.add(slug)
    return found


@pytest.mark.parametrize('page', PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_and_anchors_exist(page):
    dead = []
    for target in LINK.findall(page.read_text()):
        if re.match(r'^(https?:|mailto:)', target):
            continue
        path, _, anchor = target.partition('#')
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            dead.append(target)
        elif anchor and resolved.suffix == '.md' and anchor not in anchors(resolved):
            dead.append(target)
    assert not dead, f'{page.relative_to(REPO)}: dead links {dead}'


@pytest.mark.parametrize('page', PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_named_repository_files_exist(page):
    missing = []
    for name in set(PATH.findall(page.read_text())):
        name = name.rstrip('.')
        if name.endswith('.pth') and not name.startswith('checkpoints/demo/'):
            continue  # a checkpoint the user converts or trains, not a shipped file
        if name.endswith(('_', '-')):  # a template such as configs/dtl/vtab/vit-b_dtl_<task>.py
            name += '*'
        if '*' in name:
            if not glob.glob(str(REPO / name)):
                missing.append(name)
        elif not (REPO / name).exists():
            missing.append(name)
    assert not missing, f'{page.relative_to(REPO)} names files that do not exist: {missing}'


def test_readme_is_short_and_complete():
    text = (REPO / 'README.md').read_text()
    assert len(text.splitlines()) <= 210
    for section in ('## Install', '## Layout', '## Citation', '## License'):
        assert section in text
    assert (REPO / 'LICENSE').read_text().count('Apache License') >= 1
    assert 'preferred-citation' in (REPO / 'CITATION.cff').read_text()
    # the layout names every module of the package
    layout = text.split('## Layout', 1)[1].split('##', 1)[0]
    for module in sorted((REPO / 'mmdtl').rglob('*.py')):
        rel = module.relative_to(REPO)
        if module.name == '__init__.py' and rel.parent.name != 'mmdtl':
            continue
        if module.name == '__init__.py':
            continue
        named = (module.stem in layout or str(rel) in layout or
                 f'{rel.parent.as_posix()}/' in layout)
        assert named, f'README Layout does not name {rel}'
