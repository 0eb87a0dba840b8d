from .allocator import CPUAllocatorHook, set_malloc_mmap_threshold
from .hooks import BinarizationSwitchHook, PackedInferenceHook
from .optimizers import CompilableOptimWrapperConstructor

__all__ = [
    'BinarizationSwitchHook', 'CompilableOptimWrapperConstructor',
    'CPUAllocatorHook', 'PackedInferenceHook', 'set_malloc_mmap_threshold'
]
