"""The C allocator's mmap threshold, for training on CPU.

On Linux, PyTorch's CPU tensors come from glibc's ``malloc``. An allocation
above the *mmap threshold* gets its own memory map, handed back to the
system when the tensor is freed; smaller ones come from the heap, whose free
holes stay resident. glibc raises the threshold at run time to the size of
each large block freed (up to 32 MiB), so after the first training step
nearly every activation of a segmentor comes from the heap. A binary model
frees many more float temporaries per step than an FP one (shifted inputs,
signs, rebuilt operands), and the holes they leave add up to about a third
of its resident peak (docs/efficiency.md, "Training memory"). A fixed
threshold keeps large tensors on memory maps: the memory a step frees is
returned, at the cost of a page fault per page of each new large tensor.

:func:`set_malloc_mmap_threshold` sets it (``mallopt(M_MMAP_THRESHOLD)``,
which also turns the run-time raising off); :class:`CPUAllocatorHook` does
so at the start of a run, from a config.
"""
import ctypes
import ctypes.util
import platform
from typing import Optional

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS

__all__ = ['set_malloc_mmap_threshold', 'check_mmap_threshold',
           'CPUAllocatorHook', 'DEFAULT_MMAP_THRESHOLD', 'MAX_MMAP_THRESHOLD']

#: 128 KiB: glibc's own initial threshold
DEFAULT_MMAP_THRESHOLD = 128 * 1024
#: glibc refuses thresholds above half its largest heap (32 MiB on 64-bit)
MAX_MMAP_THRESHOLD = 32 * 1024 * 1024
_M_MMAP_THRESHOLD = -3  # from glibc's malloc.h


def _glibc() -> Optional[ctypes.CDLL]:
    if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
        return None
    name = ctypes.util.find_library('c')
    return None if name is None else ctypes.CDLL(name)


def check_mmap_threshold(nbytes: int, what: str = 'the mmap threshold'
                         ) -> int:
    """``nbytes`` if it is a valid threshold, else a ValueError naming
    ``what`` and the range."""
    if (isinstance(nbytes, bool) or not isinstance(nbytes, int)
            or not 0 < nbytes <= MAX_MMAP_THRESHOLD):
        raise ValueError(f'{what} must be an int in (0, {MAX_MMAP_THRESHOLD}] '
                         f'bytes, got {nbytes!r}')
    return nbytes


def set_malloc_mmap_threshold(
        nbytes: int = DEFAULT_MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold of this process at ``nbytes``.

    Allocations of at least ``nbytes`` get their own memory map from now on
    and return to the system when freed; the threshold no longer rises at
    run time. Allocations made before are not moved.

    Args:
        nbytes: The threshold in bytes, in ``(0, 32 MiB]``.

    Returns:
        True when set; False where the C library is not glibc (macOS,
        Windows, musl), which is logged: the allocator is then left as it is.

    Raises:
        ValueError: ``nbytes`` out of range.
    """
    check_mmap_threshold(nbytes)
    libc = _glibc()
    if libc is None:
        print_log('malloc mmap threshold: the C library is not glibc; the '
                  'allocator is left as it is', logger='current', level=30)
        return False
    if libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(nbytes)) != 1:
        raise RuntimeError(f'glibc refused mallopt(M_MMAP_THRESHOLD, '
                           f'{nbytes})')
    return True


@HOOKS.register_module()
class CPUAllocatorHook(Hook):
    """Fix the C allocator's mmap threshold when a run starts.

    With it, a CPU training step returns the memory it frees instead of
    keeping it resident: the fully binary Swin-T UPerNet's peak training
    memory on CPU drops by about a third, the FP model's by about an eighth,
    and the steps get slower (20-25 % for the binary model) by the page
    faults of new large tensors (docs/efficiency.md). A trade, so it is
    opt-in: ``custom_hooks = [dict(type='CPUAllocatorHook')]``. On GPU it
    only touches host memory. Registered in mmengine's root registry, so
    mmseg, mmdet and mmpretrain configs all find it.

    Args:
        mmap_threshold: Bytes; see :func:`set_malloc_mmap_threshold`.
    """

    priority = 'VERY_HIGH'

    def __init__(self, mmap_threshold: int = DEFAULT_MMAP_THRESHOLD) -> None:
        # checked here, so a bad config fails when the hook is built
        self.mmap_threshold = check_mmap_threshold(
            mmap_threshold, 'CPUAllocatorHook: mmap_threshold')

    def before_run(self, runner) -> None:
        if set_malloc_mmap_threshold(self.mmap_threshold):
            print_log(f'CPUAllocatorHook: malloc mmap threshold fixed at '
                      f'{self.mmap_threshold} bytes (freed tensors return '
                      'to the system)', logger='current')
