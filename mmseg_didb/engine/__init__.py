from .allocator import CPUAllocatorHook, set_malloc_mmap_threshold
from .checkpoint import (SafeCheckpointHook, checkpoint_readable,
                         latest_readable_checkpoint, safe_checkpoints)
from .hooks import BinarizationSwitchHook, PackedInferenceHook
from .optimizers import CompilableOptimWrapperConstructor

__all__ = [
    'BinarizationSwitchHook', 'CompilableOptimWrapperConstructor',
    'CPUAllocatorHook', 'PackedInferenceHook', 'SafeCheckpointHook',
    'checkpoint_readable', 'latest_readable_checkpoint', 'safe_checkpoints',
    'set_malloc_mmap_threshold'
]
