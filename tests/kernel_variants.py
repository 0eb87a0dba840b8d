"""Run a test under every kernel variant of the packed layers: each native
variant this CPU supports (AVX-512, AVX2, POPCNT, generic) and the
pure-PyTorch kernels."""
import contextlib

from mmseg_didb.deploy import (kernel_variants, kernels_available,
                               set_kernel_variant, use_native)

VARIANTS = kernel_variants() + ['pytorch']


@contextlib.contextmanager
def variant(name):
    """Run with one native variant, or with the PyTorch kernels."""
    native = kernels_available()
    best = kernel_variants()[0] if kernel_variants() else None
    try:
        if name == 'pytorch':
            use_native(False)
        else:
            use_native(True)
            set_kernel_variant(name)
        yield
    finally:
        if best is not None:
            set_kernel_variant(best)
        if native:
            use_native(True)
