from .hooks import BinarizationSwitchHook, PackedInferenceHook

__all__ = ['BinarizationSwitchHook', 'PackedInferenceHook']
