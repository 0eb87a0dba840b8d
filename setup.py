"""mmseg_didb: fully binary vision transformers for MMSegmentation 1.x."""
import os
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


def extensions() -> dict:
    """The bit-packed kernels, a C++ extension built against the installed
    torch (``mmseg_didb.deploy._C``); ``MMSEG_DIDB_NO_EXT=1`` skips it (the
    pure-PyTorch kernels are used then)."""
    if os.environ.get('MMSEG_DIDB_NO_EXT') == '1':
        return {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    # No -march: the code picks AVX-512 / AVX2 / POPCNT variants at run time
    # from what the CPU reports. No FP contraction: packing must round like
    # PyTorch's binarizers. No strict aliasing: the kernels read the 64-bit
    # packed words as 32-bit halves.
    ext = CppExtension(
        'mmseg_didb.deploy._C',
        ['mmseg_didb/deploy/csrc/bitpack.cpp'],
        extra_compile_args=['-O3', '-fopenmp', '-ffp-contract=off',
                            '-fno-strict-aliasing'],
        extra_link_args=['-fopenmp'])
    return dict(ext_modules=[ext],
                cmdclass={'build_ext': BuildExtension.with_options(
                    use_ninja=True)})


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
    # peers: the INT8 engines of tools/analysis/peer_bench.py
    extras_require=dict(tests=read_requirements('tests.txt'),
                        peers=read_requirements('peers.txt')),
    license='Apache-2.0',
    classifiers=[
        'Programming Language :: Python :: 3',
        'Topic :: Scientific/Engineering :: Artificial Intelligence',
    ],
    zip_safe=False,
    **extensions())
