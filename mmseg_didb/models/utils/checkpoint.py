"""Strict checkpoint loading shared by the plugin's backbones.

mmseg's own backbones load ``init_cfg`` checkpoints with ``strict=False`` and
ignore ``prefix``, so a checkpoint in the wrong format silently loads nothing.
:func:`load_checkpoint_strict` is the opposite: it resolves the file (with a
helpful error when it is missing), unwraps the usual containers, strips the
prefix, lets the model's load-state-dict pre-hooks convert foreign key layouts,
and raises an error naming every missing and unexpected key.
"""
import logging
import os.path as osp
import pickle
import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn
from mmengine.logging import print_log

__all__ = [
    'CheckpointMismatchError', 'CorruptCheckpointError',
    'UnsafeCheckpointError', 'UNSAFE_OPT_IN',
    'read_checkpoint', 'read_state_dict',
    'unwrap_state_dict',
    'load_checkpoint_strict', 'load_whole_checkpoint',
    'resolve_checkpoint_path',
    'StrictPretrainedMixin'
]

Tensor = torch.Tensor

#: Container keys holding the state dict, tried in this order: mmengine
#: (``state_dict``), official Swin / DeiT (``model``), EMA-only files.
STATE_DICT_KEYS = ('state_dict', 'model', 'model_ema', 'state_dict_ema')


class CheckpointMismatchError(RuntimeError):
    """A checkpoint does not cover the model (or carries foreign keys)."""


def resolve_checkpoint_path(path: str, hint: str = '') -> str:
    """Return ``path`` if it is an existing file, else raise FileNotFoundError.

    Args:
        path: Local checkpoint path (``~`` is expanded).
        hint: How to obtain a suitable checkpoint; appended to the message.
    """
    if not isinstance(path, str):
        raise TypeError(f'checkpoint must be a path string, got {type(path)}')
    if re.match(r'^[a-z]+://', path):
        raise FileNotFoundError(
            f'checkpoint {path!r} is a URL; nothing is downloaded at run time. '
            'Download it yourself and set the local path in the config. '
            + hint)
    full = osp.expanduser(path)
    if not osp.isfile(full):
        raise FileNotFoundError(
            f'checkpoint file {path!r} does not exist. ' + hint)
    return full


class CorruptCheckpointError(RuntimeError):
    """A checkpoint file that cannot be read (truncated, corrupt, not a
    checkpoint)."""


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint that weights-only loading refuses (it pickles objects
    beyond tensors and the allowlisted Runner bookkeeping)."""


#: How to load a refused file anyway (every entry point names its switch).
UNSAFE_OPT_IN = (
    'If you trust this file, opt in to a full unpickle, which runs any code '
    'the file carries: allow_unsafe_load=True in the backbone init_cfg, '
    'teacher_allow_unsafe_load=True for a distillation teacher, or '
    '--unsafe-load on the tools (tools/train.py for load_from / --resume, '
    'tools/test.py, tools/deploy.py, tools/export_binary.py, '
    'tools/convert_pretrained.py, tools/pretrain_cls.py). Better: re-save '
    'the weights as a plain state dict.')


def read_checkpoint(path: str, map_location: Any = 'cpu',
                    allow_unsafe: bool = False) -> Mapping:
    """Read a checkpoint file with weights-only unpickling.

    Tensors, containers, numbers and the globals mmengine Runner checkpoints
    need (allowlisted by :mod:`mmseg_didb.compat`) load; a file that pickles
    anything else is refused with :class:`UnsafeCheckpointError`, because
    unpickling it could run arbitrary code.

    Args:
        path: Local checkpoint file.
        map_location: Passed to ``torch.load``.
        allow_unsafe: Fall back to a full unpickle for a refused file (an
            explicit opt-in for trusted files; logged as a warning).

    Raises:
        UnsafeCheckpointError: the file needs a full unpickle and
            ``allow_unsafe`` is False; the message says how to opt in.
        CorruptCheckpointError: the file is truncated or not a checkpoint.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except (RuntimeError, EOFError, OSError) as e:
        reason = str(e).splitlines()[0] if str(e) else 'unexpected end of file'
        raise CorruptCheckpointError(
            f'{path} cannot be read as a checkpoint ({reason[:160]}): the '
            'file is truncated or corrupt, e.g. an interrupted download or '
            'save. Download or save it again.') from None
    except pickle.UnpicklingError as e:
        reason = next((line.strip() for line in str(e).splitlines()
                       if 'Unsupported global' in line or 'refused' in line),
                      str(e).splitlines()[0] if str(e) else repr(e))
        if not allow_unsafe:
            raise UnsafeCheckpointError(
                f'{path}: weights-only loading refused this checkpoint '
                f'({reason}). {UNSAFE_OPT_IN}') from None
    print_log(f'{path}: loading with a FULL unpickle (unsafe load opted in; '
              'only for trusted files: it can run code)',
              logger='current', level=logging.WARNING)
    return torch.load(path, map_location=map_location, weights_only=False)


def read_state_dict(path: str,
                    keys: Sequence[str] = ('state_dict', ),
                    allow_unsafe: bool = False) -> Dict[str, Any]:
    """The whole state dict of a local checkpoint file.

    The first of ``keys`` that holds a dict is the state dict (none: the file
    itself); DataParallel ``module.`` prefixes are stripped. Unlike
    :func:`unwrap_state_dict` no ``backbone.`` selection is made, so a
    segmentor or classifier checkpoint loads into the whole model.

    Raises:
        ValueError: the file holds no dict.
        UnsafeCheckpointError: see :func:`read_checkpoint`
            (``allow_unsafe`` opts in).
    """
    return _whole_state_dict(read_checkpoint(path, allow_unsafe=allow_unsafe),
                             keys, path)


def _whole_state_dict(state: Any, keys: Sequence[str],
                      source: str) -> Dict[str, Any]:
    if isinstance(state, Mapping):
        for key in keys:
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping):
        raise ValueError(f'{source} holds no state dict')
    return {(k[len('module.'):] if k.startswith('module.') else k): v
            for k, v in state.items()}


def unwrap_state_dict(checkpoint: Mapping,
                      prefix: Optional[str] = None) -> Dict[str, Tensor]:
    """Return the plain tensor state dict held in a checkpoint.

    Args:
        checkpoint: A state dict or a container holding one under
            ``state_dict`` / ``model`` / ``model_ema`` / ``state_dict_ema``.
        prefix: Keep only keys starting with it, stripped (e.g. ``'backbone.'``
            for a segmentor or an mmpretrain classifier). None: strip a
            DataParallel ``module.`` and, when some keys start with
            ``backbone.``, keep only those (stripped).

    Raises:
        TypeError: not a dict. KeyError: no key starts with ``prefix``.
    """
    if not isinstance(checkpoint, Mapping):
        raise TypeError('a checkpoint must be a dict (a state dict or a dict '
                        'holding "state_dict" / "model"), got '
                        f'{type(checkpoint).__name__}')
    for key in STATE_DICT_KEYS:
        if isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
            break
    sd = {k: v for k, v in checkpoint.items() if isinstance(v, Tensor)}
    if sd and all(k.startswith('module.') for k in sd):
        sd = {k[len('module.'):]: v for k, v in sd.items()}
    if prefix:
        picked = {k[len(prefix):]: v for k, v in sd.items()
                  if k.startswith(prefix)}
        if not picked:
            raise KeyError(
                f'no key of the checkpoint starts with prefix {prefix!r}; '
                f'keys look like {sorted(sd)[:5]}. Use prefix=None for a '
                'backbone / classification checkpoint.')
        return picked
    if any(k.startswith('backbone.') for k in sd):
        sd = {k[len('backbone.'):]: v for k, v in sd.items()
              if k.startswith('backbone.')}
    return sd


def _short(keys: Sequence[str], limit: int = 20) -> str:
    keys = sorted(keys)
    more = f' ... (+{len(keys) - limit} more)' if len(keys) > limit else ''
    return ', '.join(keys[:limit]) + more


def _check_all_matched(model: nn.Module, source: str,
                       missing: Sequence[str], unexpected: Sequence[str],
                       hint: str = '') -> None:
    if missing or unexpected:
        raise CheckpointMismatchError(
            f'{source} does not match {type(model).__name__}: '
            f'{len(missing)} missing keys [{_short(missing)}]; '
            f'{len(unexpected)} unexpected keys [{_short(unexpected)}]'
            + (f'. {hint}' if hint else ''))


def load_whole_checkpoint(model: nn.Module, checkpoint: Union[str, Mapping],
                          keys: Sequence[str] = ('state_dict', ),
                          hint: str = '',
                          allow_unsafe: bool = False) -> None:
    """Load a whole-model checkpoint file (a segmentor, a classifier, a
    teacher) into ``model``, every key matched.

    Unlike :func:`load_checkpoint_strict` no ``backbone.`` selection is made
    (see :func:`read_state_dict`).

    Args:
        model: Module to load into.
        checkpoint: Local checkpoint file, or the checkpoint already read
            from it (:func:`read_checkpoint`).
        keys: Entries that may hold the state dict, first match wins.
        hint: What to do about a missing file or a mismatch (appended to the
            message).
        allow_unsafe: Opt-in to full unpickling (trusted files only).

    Raises:
        FileNotFoundError: missing file (or a URL).
        CheckpointMismatchError: model keys left unloaded, or checkpoint
            keys the model does not have.
    """
    if isinstance(checkpoint, str):
        source = checkpoint
        state = read_state_dict(resolve_checkpoint_path(checkpoint, hint),
                                keys, allow_unsafe=allow_unsafe)
    else:
        source, state = 'checkpoint', _whole_state_dict(checkpoint, keys,
                                                         'checkpoint')
    result = model.load_state_dict(state, strict=False)
    _check_all_matched(model, source, result.missing_keys,
                       result.unexpected_keys, hint)


def load_checkpoint_strict(model: nn.Module,
                           checkpoint: Union[str, Mapping],
                           prefix: Optional[str] = None,
                           map_location: Any = 'cpu',
                           hint: str = '',
                           allow_missing: Iterable[str] = (),
                           logger: str = 'current',
                           allow_unsafe: bool = False
                           ) -> Dict[str, List[str]]:
    """Load a checkpoint into ``model`` and fail loudly on any mismatch.

    Steps: resolve the file (FileNotFoundError with ``hint`` when missing),
    unwrap the container, strip ``prefix``, call ``model.load_state_dict``
    (whose pre-hooks convert foreign layouts), then check the result.

    Args:
        model: Module to load into.
        checkpoint: File path or an already loaded checkpoint dict.
        prefix: See :func:`unwrap_state_dict`.
        map_location: Passed to ``torch.load``.
        hint: How to obtain a checkpoint (for the FileNotFoundError).
        allow_missing: Regexes of model keys that may stay at their init.
        logger: mmengine logger name for the summary line.

    Returns:
        dict with the ``missing_keys`` tolerated by ``allow_missing``.

    Raises:
        FileNotFoundError: missing file.
        CheckpointMismatchError: no key matched, model keys left unloaded,
            or checkpoint keys the model does not have.
    """
    source = 'state dict'
    if isinstance(checkpoint, str):
        source = checkpoint
        checkpoint = read_checkpoint(
            resolve_checkpoint_path(checkpoint, hint), map_location,
            allow_unsafe=allow_unsafe)
    sd = unwrap_state_dict(checkpoint, prefix)
    if not sd:
        raise CheckpointMismatchError(
            f'{source}: the checkpoint holds no tensors' +
            (f' under prefix {prefix!r}' if prefix else ''))
    result = model.load_state_dict(sd, strict=False)
    allowed = [re.compile(p) for p in allow_missing]
    missing = [k for k in result.missing_keys
               if not any(p.search(k) for p in allowed)]
    tolerated = sorted(set(result.missing_keys) - set(missing))
    unexpected = list(result.unexpected_keys)
    own = set(model.state_dict())
    if not own - set(result.missing_keys):
        raise CheckpointMismatchError(
            f'{source}: loading into {type(model).__name__} matched no key. '
            f'Checkpoint keys look like {_short(list(sd), 8)}; model keys '
            f'look like {_short(list(own), 8)}. Check the checkpoint format '
            'and the prefix (a segmentor checkpoint needs '
            "prefix='backbone.').")
    _check_all_matched(model, source, missing, unexpected)
    print_log(f'loaded {source} into {type(model).__name__} '
              f'({len(own) - len(result.missing_keys)} keys)', logger=logger)
    return dict(missing_keys=tolerated)


class StrictPretrainedMixin:
    """``init_weights`` and key conversion shared by the plugin's backbones.

    Mix in before ``BaseModule``. A ``Pretrained`` ``init_cfg`` is loaded with
    :func:`load_checkpoint_strict`; the load-state-dict pre-hook
    :meth:`_convert_checkpoint` (registered in ``__init__``) hands the
    backbone's own keys to :meth:`_convert_state_dict`, so every
    ``load_state_dict`` (``init_cfg``, ``load_from``, a segmentor checkpoint)
    accepts any layout the backbone's converter knows. Without a
    ``Pretrained`` ``init_cfg`` the backbone runs :meth:`_init_fresh` and then
    any other ``init_cfg`` through ``BaseModule.init_weights``.

    Subclasses set ``checkpoint_hint`` (how to obtain a checkpoint) and
    ``init_before_load`` (run :meth:`_init_fresh` before loading, so the
    parameters a FP checkpoint lacks keep that init instead of the
    constructor's), and implement :meth:`_init_fresh` and
    :meth:`_convert_state_dict`.
    """

    checkpoint_hint: str = ''
    init_before_load: bool = False

    def _init_fresh(self) -> None:
        raise NotImplementedError

    def _convert_state_dict(self, own: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """Convert the backbone's keys (prefix stripped) to its own layout."""
        raise NotImplementedError

    def _convert_checkpoint(self, state_dict: dict, prefix: str,
                            *args) -> None:
        """Load-state-dict pre-hook: convert the keys under ``prefix``."""
        own = {k[len(prefix):]: state_dict.pop(k)
               for k in [k for k in state_dict if k.startswith(prefix)]}
        if not own:
            return
        converted = self._convert_state_dict(own)
        state_dict.update({prefix + k: v for k, v in converted.items()})

    def init_weights(self) -> None:
        """Load the ``Pretrained`` ``init_cfg`` strictly, else a fresh init."""
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            if 'checkpoint' not in cfg:
                raise ValueError("init_cfg of type 'Pretrained' needs "
                                 'checkpoint=PATH. ' + self.checkpoint_hint)
            if self.init_before_load:
                self._init_fresh()
            load_checkpoint_strict(
                self, cfg['checkpoint'], prefix=cfg.get('prefix'),
                hint=self.checkpoint_hint,
                allow_unsafe=bool(cfg.get('allow_unsafe_load', False)))
        else:
            self._init_fresh()
            if cfg is not None:
                super().init_weights()
        self._is_init = True
