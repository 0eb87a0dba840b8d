from .hooks import BinarizationSwitchHook

__all__ = ['BinarizationSwitchHook']
