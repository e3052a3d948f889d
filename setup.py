from pathlib import Path

from setuptools import find_packages, setup

# One list of requirements, read without importing mmdtl (or torch):
# mmdtl/requirements.py, which `import mmdtl` also checks.
requirements = {}
exec(Path(__file__).with_name('mmdtl').joinpath('requirements.py').read_text(), requirements)
lines = requirements['requirement_lines']
extras_require = {name: lines(specs) for name, specs in requirements['EXTRAS'].items()}
extras_require['all'] = sorted({r for name in ('mmdet', 'mmseg') for r in extras_require[name]})

setup(
    name='mmdtl',
    version='0.1.0',
    description='Disentangled Transfer Learning (DTL, AAAI 2024) for OpenMMLab',
    license='Apache-2.0',
    python_requires='>=3.9',
    packages=find_packages(include=['mmdtl', 'mmdtl.*']),
    install_requires=lines(requirements['REQUIRED']),
    extras_require=extras_require)
