"""mmseg_didb: fully binary vision transformers for MMSegmentation 1.x."""
import os.path as osp
import re

from setuptools import find_packages, setup

HERE = osp.dirname(osp.abspath(__file__))


def read_version() -> str:
    with open(osp.join(HERE, 'mmseg_didb', '__init__.py')) as f:
        match = re.search(r"^__version__ = '([^']+)'", f.read(), re.M)
    if match is None:
        raise RuntimeError('__version__ not found in mmseg_didb/__init__.py')
    return match.group(1)


def read_requirements(name: str) -> list:
    """Non-comment lines of requirements/<name>.txt (direct dependencies)."""
    with open(osp.join(HERE, 'requirements', name)) as f:
        lines = (line.split('#')[0].strip() for line in f)
        return [line for line in lines if line]


def read_readme() -> str:
    path = osp.join(HERE, 'README.md')
    if not osp.isfile(path):
        return ''
    with open(path, encoding='utf-8') as f:
        return f.read()


setup(
    name='mmseg_didb',
    version=read_version(),
    description='Fully binary vision transformers (DIDB-ViT) for '
    'MMSegmentation 1.x',
    long_description=read_readme(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['mmseg_didb', 'mmseg_didb.*']),
    python_requires='>=3.9',
    # Tested pins: requirements/constraints.txt (pip install -c ...).
    install_requires=read_requirements('runtime.txt'),
    extras_require=dict(tests=read_requirements('tests.txt')),
    license='Apache-2.0',
    classifiers=[
        'Programming Language :: Python :: 3',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
    zip_safe=False)
