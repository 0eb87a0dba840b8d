"""The C allocator's mmap threshold (mmseg_didb.engine.allocator)."""
import json
import logging
import platform
import subprocess
import sys

import mmseg_didb  # noqa: F401  (first: installs the mmcv-lite shims)
import pytest
from mmengine.registry import HOOKS as ROOT_HOOKS
from mmseg.registry import HOOKS as MMSEG_HOOKS

from conftest import REPO_ROOT, log_records
from mmseg_didb.engine import allocator
from mmseg_didb.engine.allocator import (MAX_MMAP_THRESHOLD, CPUAllocatorHook,
                                         set_malloc_mmap_threshold)

GLIBC = platform.system() == 'Linux' and platform.libc_ver()[0] == 'glibc'

# Frees every other one of 48 tensors of 2 MiB after glibc raised its
# threshold (by freeing a 16 MiB block): from the heap, the freed half stays
# resident; on memory maps it goes back to the system.
_HOLES = """
import importlib.util, json, sys, torch
# the module alone (not the plugin, which imports mmseg): a fast child
spec = importlib.util.spec_from_file_location('allocator', sys.argv[2])
allocator = importlib.util.module_from_spec(spec)
spec.loader.exec_module(allocator)
if sys.argv[1] == 'fixed':
    assert allocator.set_malloc_mmap_threshold(128 * 1024)
big = torch.ones(4 * 2**20)
del big
kept = [torch.ones(2**19) for _ in range(48)]
del kept[::2]
rss = [int(line.split()[1]) for line in open('/proc/self/status')
       if line.startswith('VmRSS')][0]
print(json.dumps(rss))
"""


def _rss_kib(mode: str) -> int:
    out = subprocess.run([sys.executable, '-c', _HOLES, mode,
                          allocator.__file__],
                         cwd=str(REPO_ROOT), capture_output=True, text=True,
                         check=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not GLIBC, reason='needs glibc')
def test_fixed_threshold_returns_freed_tensors_to_the_system():
    default, fixed = _rss_kib('default'), _rss_kib('fixed')
    # 24 freed tensors of 2 MiB = 48 MiB stay resident without the fix
    assert default - fixed > 32 * 1024, (default, fixed)


@pytest.mark.parametrize('bad', [0, -1, MAX_MMAP_THRESHOLD + 1, 1.5, True,
                                 '131072'])
def test_bad_thresholds_are_refused(bad):
    with pytest.raises(ValueError, match=r'int in \(0, 33554432\] bytes'):
        set_malloc_mmap_threshold(bad)
    with pytest.raises(ValueError, match='CPUAllocatorHook: mmap_threshold'):
        CPUAllocatorHook(mmap_threshold=bad)


def test_not_glibc_is_logged_and_leaves_the_allocator(monkeypatch):
    monkeypatch.setattr(allocator, '_glibc', lambda: None)
    with log_records() as records:
        assert set_malloc_mmap_threshold(1 << 20) is False
    assert any('not glibc' in r.getMessage() and
               r.levelno == logging.WARNING for r in records)


def test_hook_from_any_scope_sets_the_threshold_before_the_run(monkeypatch):
    calls = []
    monkeypatch.setattr(allocator, 'set_malloc_mmap_threshold',
                        lambda n: calls.append(n) or True)
    for registry in (ROOT_HOOKS, MMSEG_HOOKS):
        hook = registry.build(dict(type='CPUAllocatorHook',
                                   mmap_threshold=1 << 20))
        assert isinstance(hook, CPUAllocatorHook)
        hook.before_run(runner=None)
    assert calls == [1 << 20, 1 << 20]
