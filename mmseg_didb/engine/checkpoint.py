"""Checkpoints that a crash cannot corrupt, and a resume that survives one.

mmengine 0.10.7 writes a checkpoint in place and deletes the outdated ones
(``max_keep_ckpts``) *before* writing the new one, so a job killed while
saving (pre-emption, out of disk) leaves a truncated ``iter_N.pth``, and
with ``max_keep_ckpts=1`` nothing readable at all; ``--resume`` then fails
instead of continuing.

* :class:`SafeCheckpointHook` (a :class:`~mmengine.hooks.CheckpointHook`):
  each checkpoint is written to ``<name>.tmp``, flushed to disk and renamed
  into place; ``last_checkpoint`` is written after the rename (as
  mmengine does) and outdated checkpoints are deleted only then.
* :func:`latest_readable_checkpoint`: the checkpoint ``--resume`` continues
  from: the one ``last_checkpoint`` names if it is readable, else the
  newest readable ``iter_*.pth`` / ``epoch_*.pth`` of the work dir, with a
  warning naming the unreadable file.
* :func:`safe_checkpoints`: both for every Runner built inside it (the
  plugin's ``tools/train.py``): a config's ``CheckpointHook`` becomes a
  :class:`SafeCheckpointHook` and an automatic ``--resume`` resolves its
  checkpoint with :func:`latest_readable_checkpoint`.
"""
import contextlib
import logging
import os
import os.path as osp
import re
import zipfile
from typing import Iterator, List, Optional

from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook
from mmengine.logging import print_log
from mmengine.registry import HOOKS
from mmengine.dist import is_main_process

__all__ = ['SafeCheckpointHook', 'checkpoint_readable',
           'latest_readable_checkpoint', 'safe_checkpoints']

_TMP_SUFFIX = '.tmp'
_STEP_NAME = re.compile(r'^(?:iter|epoch)_(\d+)\.pth$')


def _fsync(path: str) -> None:
    """Flush a file (or a directory entry) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """:class:`~mmengine.hooks.CheckpointHook` with atomic checkpoint files.

    Same arguments and behaviour, except on a local ``out_dir``: a
    checkpoint goes to ``<name>.tmp`` first, is flushed (``fsync``) and
    renamed to ``<name>`` (``os.replace``, atomic on POSIX), so a path that
    exists holds a whole checkpoint; the checkpoints that ``max_keep_ckpts``
    retires (and an outdated best checkpoint) are deleted after the new one
    is in place, so a crash while saving keeps the previous one. Used for
    every config by the plugin's ``tools/train.py``; in a config of your
    own: ``default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook',
    interval=...))``.
    """

    @contextlib.contextmanager
    def _atomic(self, runner) -> Iterator[None]:
        backend = self.file_backend
        if not isinstance(backend, LocalBackend):  # e.g. object storage
            yield
            return
        save = runner.save_checkpoint
        retired: List[str] = []

        def atomic_save(out_dir, filename, *args, **kwargs):
            if not is_main_process():  # Runner.save_checkpoint is master-only
                return save(out_dir, filename, *args, **kwargs)
            final = osp.join(out_dir, filename)
            save(out_dir, filename + _TMP_SUFFIX, *args, **kwargs)
            tmp = final + _TMP_SUFFIX
            _fsync(tmp)
            os.replace(tmp, final)
            _fsync(out_dir)

        # instance attributes shadow the methods for this save only
        runner.save_checkpoint = atomic_save
        backend.remove = retired.append
        try:
            yield
        finally:
            del runner.save_checkpoint
            del backend.remove
        # reached only when the new checkpoint is in place
        for path in retired:
            backend.remove(path)

    def _save_checkpoint_with_step(self, runner, step, meta) -> None:
        with self._atomic(runner):
            super()._save_checkpoint_with_step(runner, step, meta)

    def _save_best_checkpoint(self, runner, metrics) -> None:
        with self._atomic(runner):
            super()._save_best_checkpoint(runner, metrics)


def checkpoint_readable(path: str) -> bool:
    """Whether ``path`` is a whole checkpoint file: a ``torch.save`` zip
    archive whose members all pass their CRC check (a truncated or
    overwritten file does not)."""
    if not osp.isfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            return (any(n.endswith('data.pkl') for n in names)
                    and archive.testzip() is None)
    except (zipfile.BadZipFile, OSError, EOFError, RuntimeError):
        return False


def _step_checkpoints(work_dir: str) -> List[str]:
    """``iter_N.pth`` / ``epoch_N.pth`` of ``work_dir``, newest first."""
    found = []
    for name in os.listdir(work_dir):
        match = _STEP_NAME.match(name)
        if match:
            path = osp.join(work_dir, name)
            found.append((int(match.group(1)), osp.getmtime(path), path))
    return [path for *_, path in sorted(found, reverse=True)]


def latest_readable_checkpoint(work_dir: str) -> Optional[str]:
    """The checkpoint to resume from in ``work_dir``, or None when it has
    none.

    The file ``last_checkpoint`` names when it is readable
    (:func:`checkpoint_readable`); otherwise the newest readable
    ``iter_*.pth`` / ``epoch_*.pth``, with a warning that names the
    unreadable file.

    Raises:
        FileNotFoundError: the work dir has checkpoints but none is
            readable.
    """
    if not osp.isdir(work_dir):
        return None
    named = None
    pointer = osp.join(work_dir, 'last_checkpoint')
    if osp.isfile(pointer):
        with open(pointer) as f:
            named = f.read().strip() or None
    if named is not None and checkpoint_readable(named):
        return named
    candidates = _step_checkpoints(work_dir)
    for path in candidates:
        if checkpoint_readable(path):
            if named is not None:
                print_log(
                    f'the last checkpoint {named} is unreadable (truncated, '
                    f'missing or corrupt); resuming from {path}, the newest '
                    'readable checkpoint of the work dir', logger='current',
                    level=logging.WARNING)
            return path
    if named is not None or candidates:
        bad = ', '.join(([named] if named else []) + candidates)
        raise FileNotFoundError(
            f'--resume found no readable checkpoint in {work_dir} (unreadable: '
            f'{bad}); remove them to train from the start, or pass a '
            'checkpoint with --cfg-options load_from=PATH')
    return None


def _safe_checkpoint_config(cfg) -> None:
    """A config's ``CheckpointHook`` becomes a :class:`SafeCheckpointHook`;
    ``resume=True`` without ``load_from`` resumes from
    :func:`latest_readable_checkpoint`."""
    hooks = cfg.get('default_hooks') or {}
    ckpt = hooks.get('checkpoint') if hasattr(hooks, 'get') else None
    if isinstance(ckpt, dict) and ckpt.get('type') in ('CheckpointHook',
                                                       CheckpointHook):
        ckpt['type'] = 'SafeCheckpointHook'
    if cfg.get('resume') and cfg.get('load_from') is None:
        path = latest_readable_checkpoint(cfg.work_dir)
        if path is not None:
            # mmengine's words for its own automatic resume
            print_log(f'Auto resumed from the latest checkpoint {path}.',
                      logger='current')
            cfg.load_from = path


def safe_checkpoints() -> contextlib.AbstractContextManager:
    """Every Runner built from a config (``Runner.from_cfg``) inside the
    context saves with :class:`SafeCheckpointHook` instead of a
    ``CheckpointHook`` and, with ``resume=True`` and no ``load_from``,
    resumes from :func:`latest_readable_checkpoint` of its work dir."""
    from .mmseg_tools import edited_runner_configs
    return edited_runner_configs(_safe_checkpoint_config)
