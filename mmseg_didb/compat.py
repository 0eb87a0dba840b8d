"""Compatibility fixes for mmseg 1.2.2 on a modern, CPU-only stack.

Applied once by ``import mmseg_didb``. (Work in progress: the foundation issue
extends this module with the checkpoint-loading and config-inheritance fixes.)
"""
import importlib
import importlib.machinery
import sys
import types


class _MissingOp:
    """Callable placeholder for a compiled mmcv op that mmcv-lite lacks."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args, **kwargs):
        raise NotImplementedError(
            f'mmcv op "{self.name}" needs the compiled mmcv extension '
            '(mmcv._ext), which mmcv-lite does not ship. Install a full mmcv '
            'build (mmcv==2.1.0 compiled with MMCV_WITH_OPS=1) to use it.')


def install_mmcv_ext_placeholder() -> bool:
    """Install a placeholder ``mmcv._ext`` when the compiled one is missing.

    Returns:
        bool: True if the placeholder was installed, False if a real compiled
        extension is importable (it is then used unchanged).
    """
    if 'mmcv._ext' in sys.modules:
        return getattr(sys.modules['mmcv._ext'], '__didb_placeholder__', False)
    try:
        importlib.import_module('mmcv._ext')
        return False
    except ImportError:
        pass
    module = types.ModuleType('mmcv._ext')
    module.__spec__ = importlib.machinery.ModuleSpec('mmcv._ext', None)
    module.__didb_placeholder__ = True

    def _getattr(name: str):
        if name.startswith('__'):
            raise AttributeError(name)
        return _MissingOp(name)

    module.__getattr__ = _getattr  # type: ignore[attr-defined]
    sys.modules['mmcv._ext'] = module
    return True


def apply() -> None:
    install_mmcv_ext_placeholder()
