from .hooks import BinarizationSwitchHook, PackedInferenceHook
from .optimizers import CompilableOptimWrapperConstructor

__all__ = [
    'BinarizationSwitchHook', 'CompilableOptimWrapperConstructor',
    'PackedInferenceHook'
]
