from setuptools import find_packages, setup

# The dense-prediction codebases are optional: mmdtl (classification) imports
# without them. tools/install.sh installs both, pinned as below.
extras_require = {
    'mmdet': ['mmdet==3.3.0'],
    # mmseg.models imports ftfy and regex, which mmsegmentation does not require.
    'mmseg': ['mmsegmentation==1.2.2', 'ftfy', 'regex'],
}
extras_require['all'] = sorted({r for reqs in extras_require.values() for r in reqs})

setup(
    name='mmdtl',
    version='0.1.0',
    packages=find_packages(include=['mmdtl', 'mmdtl.*']),
    extras_require=extras_require)
