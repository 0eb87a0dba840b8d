"""Compatibility fixes for mmseg 1.2.2 / mmengine 0.10.7 on a modern stack.

``import mmseg_didb`` calls :func:`apply` once, before mmseg builds anything.
Each fix is narrow (it changes only what its upstream problem breaks) and is
covered by ``tests/test_compat.py``:

1. **mmcv-lite has no compiled ops** (:func:`install_mmcv_ext_placeholder`).
   mmseg 1.2.2 imports ``mmcv.ops`` unguarded (``mmseg/utils/
   mask_classification.py``, ``models/utils/point_sample.py``,
   ``models/losses/focal_loss.py``, ``models/decode_heads/san_head.py``), so
   ``import mmseg.models`` fails with "No module named 'mmcv._ext'" on
   ``mmcv-lite`` or any CPU-only mmcv without ops (open-mmlab/mmsegmentation
   #871; the 0.x guard of open-mmlab/mmsegmentation#1271 was lost in 1.x).
   When, and only when, the real ``mmcv._ext`` cannot be imported, a
   placeholder module is installed: importing works, and calling any compiled
   op raises :class:`MissingCompiledOpError` saying that a full mmcv build is
   needed for that op, except NMS, which runs on torchvision's (so mmdet's
   test-time box filtering works on CPU). A full mmcv is used unchanged.
2. **torch >= 2.6 loads with ``weights_only=True``** (:func:`allow_runner_
   checkpoints`). mmengine 0.10.7 calls ``torch.load`` without
   ``weights_only``, so ``--resume``, ``load_from`` and ``tools/test.py`` fail on
   every Runner checkpoint with "Unsupported global: mmengine.logging.
   history_buffer.HistoryBuffer" (open-mmlab/mmengine#1655, #1650). Safe
   loading stays on; only the globals a Runner checkpoint holds are
   allowlisted: ``HistoryBuffer``, numpy arrays, scalars and dtypes, and, for
   the ``HistoryBuffer`` statistics methods that pickle refers to as
   ``getattr(HistoryBuffer, 'mean')``, a restricted ``getattr`` that resolves
   only those methods (the real ``builtins.getattr`` would let a malicious file
   reach arbitrary objects).
3. **``mmseg::`` config inheritance without ``pkg_resources``**
   (:func:`patch_package_lookup`). mmengine 0.10.7 resolves
   ``_base_ = ['mmseg::...']`` through ``pkg_resources``, which setuptools >= 82
   removed (pypa/setuptools#5007) and which warns and rescans every installed
   distribution on each lookup before that. mmengine's ``is_installed``,
   ``get_installed_path`` and ``package2module`` are replaced by
   ``importlib.metadata`` versions, the fix mmengine merged after 0.10.7
   (open-mmlab/mmengine#1676). The lock also pins ``setuptools<82`` for other
   users of ``pkg_resources``.
4. **torch.distributed without GPUs** (:func:`patch_cpu_distributed`).
   mmengine 0.10.7 calls ``torch.cuda.set_device(local_rank)`` in the
   pytorch launcher's init whatever the backend, and wraps the model in
   ``MMDistributedDataParallel`` with ``device_ids=[local_rank]``, which
   torch refuses for a CPU module; so ``tools/dist_train.sh CONFIG 2`` fails
   on a machine without a GPU ("Found no NVIDIA driver"). When no
   accelerator is present, the process group starts on ``gloo`` (the
   config's ``nccl`` is replaced, with a log line) without a device, and
   the CPU model is wrapped without device ids; a model with SyncBatchNorm,
   which has no CPU implementation, stops with a message naming it and the
   fix (plain ``BN``). With a GPU, nothing changes.
5. **``--amp`` without a GPU** (:func:`patch_cpu_amp`). mmengine 0.10.7's
   ``AmpOptimWrapper`` asserts a CUDA/NPU/MLU device, although its
   ``autocast`` supports the CPU (bfloat16 only). Without an accelerator
   the wrapper trains in bfloat16 autocast with loss scaling off (bfloat16
   has float32's exponent range, so nothing underflows); asking for float16
   on the CPU stops with a message saying to use bfloat16. With a GPU,
   nothing changes.
6. **Checkpoints mmengine loads** (:func:`patch_runner_checkpoint_loading`):
   ``load_from``, ``--resume`` and ``tools/test.py`` read local files
   through :func:`mmseg_didb.models.utils.read_checkpoint`, i.e.
   weights-only with the allowlist of fix 2; a refused file raises an error
   naming the opt-in (``--unsafe-load`` of ``tools/train.py`` /
   ``tools/test.py``, which sets ``MMSEG_DIDB_UNSAFE_LOAD=1``), and an
   opted-in full unpickle is logged.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import os
import os.path as osp
import pickle
import sys
import types
from typing import Any, Callable, List, Optional

from .cpu import patch_cpu_amp, patch_cpu_distributed

_PLACEHOLDER_FLAG = '__didb_placeholder__'
_applied = False


# --------------------------------------------------------------------------
# 1. mmcv._ext placeholder
# --------------------------------------------------------------------------
class MissingCompiledOpError(NotImplementedError):
    """A compiled mmcv op was called but only the placeholder is installed."""


class _MissingOp:
    """Callable placeholder for a compiled mmcv op that is not available."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise MissingCompiledOpError(
            f'mmcv op "{self.name}" needs the compiled mmcv extension '
            f'(mmcv._ext), which this mmcv does not have ({self.reason}). '
            'Install a full mmcv build for this op, e.g. mmcv==2.1.0 built '
            'from source with MMCV_WITH_OPS=1 (see README, "Compatibility").')

    def __repr__(self) -> str:
        return f'<missing compiled mmcv op {self.name!r}>'


def _nms_fallback(boxes: Any, scores: Any, iou_threshold: float,
                  offset: int = 0) -> Any:
    """``mmcv._ext.nms`` on torchvision's NMS (kept indices, best first),
    so mmdet's test-time NMS runs on CPU without the compiled mmcv."""
    if int(offset) != 0:
        raise MissingCompiledOpError(
            'mmcv op "nms" with offset=1 (legacy "+1" box widths) needs the '
            'compiled mmcv extension (mmcv._ext); the torchvision fallback '
            'only does offset=0.')
    from torchvision.ops import nms
    return nms(boxes.float(), scores.float(), float(iou_threshold))


#: ops of the placeholder that run on a pure-PyTorch / torchvision fallback
_FALLBACK_OPS = {'nms': _nms_fallback}


def mmcv_ext_is_placeholder() -> bool:
    """True when ``mmcv._ext`` is this module's placeholder."""
    module = sys.modules.get('mmcv._ext')
    return bool(getattr(module, _PLACEHOLDER_FLAG, False))


def install_mmcv_ext_placeholder() -> bool:
    """Installs a placeholder ``mmcv._ext`` when the compiled one is missing.

    Returns:
        bool: True if the placeholder is (now) installed, False if a real
        compiled extension is importable (it is then used unchanged) or mmcv
        itself is not installed.
    """
    if 'mmcv._ext' in sys.modules:
        return mmcv_ext_is_placeholder()
    if importlib.util.find_spec('mmcv') is None:
        return False
    try:
        importlib.import_module('mmcv._ext')
        return False
    except ImportError as e:  # lite build, or a broken compiled build
        reason = f'import failed: {e}'
    module = types.ModuleType('mmcv._ext')
    module.__spec__ = importlib.machinery.ModuleSpec('mmcv._ext', None)
    module.__doc__ = ('Placeholder installed by mmseg_didb.compat: the '
                      'compiled mmcv extension is missing; calling an op '
                      'raises MissingCompiledOpError, except nms (on '
                      'torchvision).')
    setattr(module, _PLACEHOLDER_FLAG, True)

    def _getattr(name: str) -> Callable:
        if name.startswith('__'):
            raise AttributeError(name)
        return _FALLBACK_OPS.get(name) or _MissingOp(name, reason)

    module.__getattr__ = _getattr  # type: ignore[attr-defined]
    sys.modules['mmcv._ext'] = module
    return True


# --------------------------------------------------------------------------
# 2. weights_only loading of Runner checkpoints
# --------------------------------------------------------------------------
def _history_buffer_getattr(obj: Any, name: str) -> Callable:
    """Stands in for ``builtins.getattr`` during ``weights_only`` loading.

    ``HistoryBuffer.__getstate__`` stores its statistics methods (``min``,
    ``max``, ``current``, ``mean`` and any registered one); pickle writes a
    method defined in a class as ``getattr(HistoryBuffer, 'mean')``. Only
    such public functions of ``HistoryBuffer`` resolve; anything else is
    refused as the unpickler refuses an unknown global.
    """
    from mmengine.logging import HistoryBuffer

    if obj is HistoryBuffer and isinstance(name, str) and \
            not name.startswith('_') and \
            isinstance(HistoryBuffer.__dict__.get(name), types.FunctionType):
        return HistoryBuffer.__dict__[name]
    raise pickle.UnpicklingError(
        f'weights_only load refused getattr({obj!r}, {name!r}): only '
        'HistoryBuffer statistics methods are allowed (mmseg_didb.compat).')


def runner_checkpoint_globals() -> List[Any]:
    """The globals a Runner checkpoint holds beyond torch's defaults.

    Found with ``torch.serialization.get_unsafe_globals_in_checkpoint`` on
    checkpoints saved by mmengine's ``CheckpointHook`` (the message hub's
    ``HistoryBuffer`` logs are numpy arrays and scalars). Entries are objects
    or ``(object, pickled name)`` pairs, as ``add_safe_globals`` takes them;
    numpy 1.x checkpoints name the same functions ``numpy.core.*``.
    """
    import numpy as np
    from mmengine.logging import HistoryBuffer

    try:
        multiarray = np._core.multiarray  # numpy >= 2
    except AttributeError:  # pragma: no cover - numpy 1.x
        multiarray = np.core.multiarray
    entries: List[Any] = [HistoryBuffer, np.ndarray, np.dtype]
    for prefix in ('numpy._core.multiarray', 'numpy.core.multiarray'):
        entries.append((multiarray._reconstruct, f'{prefix}._reconstruct'))
        entries.append((multiarray.scalar, f'{prefix}.scalar'))
    # The unpickler BUILDs (``__setstate__``) a dtype only when the dtype's
    # class is allowlisted; numpy >= 1.25 gives each dtype its own class
    # (numpy.dtypes.Float64DType, ...). Numeric and bool dtypes only.
    for char in '?bBhHiIlLqQefdgFDG':
        cls = type(np.dtype(char))
        if cls is not np.dtype:
            entries.append((cls, f'{cls.__module__}.{cls.__qualname__}'))
    entries.append((_history_buffer_getattr, 'builtins.getattr'))
    # pickle protocol 2 writes an empty bytes object (the data of an empty
    # array, e.g. a HistoryBuffer that never logged) as a call to bytes()
    entries.append(bytes)
    return entries


def allow_runner_checkpoints() -> bool:
    """Allowlists Runner-checkpoint globals for ``torch.load(weights_only)``.

    Returns:
        bool: True if the allowlist was added, False on a torch without
        ``torch.serialization.add_safe_globals`` (torch < 2.4 loads with
        ``weights_only=False`` by default and needs nothing).
    """
    import torch

    add = getattr(torch.serialization, 'add_safe_globals', None)
    if add is None:  # pragma: no cover - old torch
        return False
    add(runner_checkpoint_globals())
    return True


# --------------------------------------------------------------------------
# 3. mmseg:: config inheritance without pkg_resources
# --------------------------------------------------------------------------
def _distribution(package: str) -> Optional[importlib.metadata.Distribution]:
    try:
        return importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def is_installed(package: str) -> bool:
    """``mmengine.utils.is_installed`` without ``pkg_resources``."""
    if _distribution(package) is not None:
        return True
    spec = importlib.util.find_spec(package)
    return spec is not None and spec.origin is not None


def package2module(package: str) -> str:
    """``mmengine.utils.package_utils.package2module`` without
    ``pkg_resources``: the first top-level module of a distribution."""
    dist = _distribution(package)
    if dist is None:
        raise importlib.metadata.PackageNotFoundError(package)
    top_level = dist.read_text('top_level.txt')
    if top_level and top_level.split():
        return top_level.split()[0]
    raise ValueError(f'can not infer the module name of {package}')


def get_installed_path(package: str) -> str:
    """``mmengine.utils.get_installed_path`` without ``pkg_resources``."""
    dist = _distribution(package)
    if dist is None:
        spec = importlib.util.find_spec(package)
        if spec is None:
            raise importlib.metadata.PackageNotFoundError(package)
        if spec.origin is None:
            raise RuntimeError(
                f'{package} is a namespace package, which is invalid '
                'for `get_install_path`')
        return osp.dirname(spec.origin)
    location = str(dist.locate_file(''))
    possible_path = osp.join(location, package)
    if osp.exists(possible_path):
        return possible_path
    return osp.join(location, package2module(package))


def patch_package_lookup() -> bool:
    """Makes mmengine's package lookup (``mmseg::`` config paths) use
    ``importlib.metadata`` instead of ``pkg_resources``.

    Returns:
        bool: True if mmengine's lookup functions were replaced (False only
        when mmengine is not installed).
    """
    if importlib.util.find_spec('mmengine') is None:
        return False
    import mmengine.config.config as config_module
    import mmengine.utils as utils_module
    import mmengine.utils.package_utils as package_utils

    # mmengine imports these by name, so each importing module is patched.
    replacements = dict(
        is_installed=is_installed,
        get_installed_path=get_installed_path,
        package2module=package2module)
    for module in (package_utils, utils_module, config_module,
                   sys.modules.get('mmengine.hub.hub')):
        if module is None:
            continue
        for name, func in replacements.items():
            if hasattr(module, name):
                setattr(module, name, func)
    return True


# --------------------------------------------------------------------------
# 6. weights-only loading of every checkpoint mmengine reads
# --------------------------------------------------------------------------
UNSAFE_LOAD_ENV = 'MMSEG_DIDB_UNSAFE_LOAD'


def add_unsafe_load_argument(parser: argparse.ArgumentParser,
                             what: str = 'a checkpoint') -> None:
    """``--unsafe-load``, every tool's explicit opt-in to a full unpickle of
    ``what`` when weights-only loading refuses it."""
    parser.add_argument(
        '--unsafe-load', action='store_true',
        help=f'load {what} that weights-only unpickling refuses with a full '
        'unpickle (trusted files only: it can run code; logged)')


def unsafe_load_opted_in() -> bool:
    """True when the tools' ``--unsafe-load`` (``MMSEG_DIDB_UNSAFE_LOAD=1``)
    opted in to full unpickling of refused checkpoints."""
    return os.environ.get(UNSAFE_LOAD_ENV) == '1'


def _load_local_checkpoint(filename: str, map_location: Any = None) -> Any:
    """mmengine's local-file checkpoint loader, weights-only."""
    from mmseg_didb.models.utils.checkpoint import read_checkpoint
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'{filename} can not be found.')
    return read_checkpoint(filename, map_location=map_location,
                           allow_unsafe=unsafe_load_opted_in())


def patch_runner_checkpoint_loading() -> bool:
    """Routes mmengine's local checkpoint loading (``load_from``,
    ``resume``, ``load_checkpoint``) through weights-only unpickling.

    Returns:
        bool: True if mmengine's loader was replaced (False only when
        mmengine is not installed).
    """
    if importlib.util.find_spec('mmengine') is None:
        return False
    from mmengine.runner.checkpoint import CheckpointLoader
    CheckpointLoader.register_scheme(prefixes='',
                                     loader=_load_local_checkpoint,
                                     force=True)
    return True


def apply() -> None:
    """Applies every fix once (called by ``import mmseg_didb``)."""
    global _applied
    if _applied:
        return
    install_mmcv_ext_placeholder()
    allow_runner_checkpoints()
    patch_package_lookup()
    patch_cpu_distributed()
    patch_cpu_amp()
    patch_runner_checkpoint_loading()
    _applied = True
