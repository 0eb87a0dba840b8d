"""Crash-safe checkpoints: a job killed while writing a checkpoint, or one
whose last checkpoint is truncated, resumes from the newest readable one
(mmseg_didb.engine.checkpoint)."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import REPO_ROOT, write_binary_config
from mmseg_didb.engine import checkpoint_readable, latest_readable_checkpoint

MAX_ITERS = 6
TRAIN = str(REPO_ROOT / 'tools' / 'train.py')


def _env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS='1', **extra)
    env['PYTHONPATH'] = os.pathsep.join(
        [str(REPO_ROOT / 'tests'), env.get('PYTHONPATH', '')])
    return env


def _resume(cfg, work) -> str:
    out = subprocess.run(
        [sys.executable, TRAIN, str(cfg), '--work-dir', str(work),
         '--resume'], cwd=str(REPO_ROOT), env=_env(), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=600).stdout
    assert f'Iter(train) [{MAX_ITERS}/{MAX_ITERS}]' in out, out[-4000:]
    return out


def _final_iter(work) -> int:
    ckpt = torch.load(work / f'iter_{MAX_ITERS}.pth', map_location='cpu',
                      weights_only=True)
    return ckpt['meta']['iter']


def test_sigkill_while_saving_resumes_from_the_previous_checkpoint(
        tmp_path, texture_data):
    # max_keep_ckpts=1: the checkpoint of iteration 2 is the only one when
    # the save of iteration 4 starts
    cfg = write_binary_config(
        tmp_path / 'kill.py', texture_data, iters=MAX_ITERS, ckpt_interval=2,
        extra="custom_imports = dict(imports=['mmseg_didb', 'slow_save'])\n"
        "default_hooks = dict(logger=dict(interval=1), checkpoint=dict(\n"
        "    interval=2, save_last=True, max_keep_ckpts=1))\n")
    work = tmp_path / 'work'
    marker = tmp_path / 'saving'
    log_path = tmp_path / 'first.log'
    with open(log_path, 'w') as log:
        proc = subprocess.Popen(
            [sys.executable, TRAIN, str(cfg), '--work-dir', str(work)],
            cwd=str(REPO_ROOT), stdout=log, stderr=subprocess.STDOUT,
            env=_env(SLOW_SAVE_ITER='4', SLOW_SAVE_MARKER=str(marker)))
        try:
            deadline = time.time() + 300
            while not marker.exists():
                assert proc.poll() is None, log_path.read_text()[-3000:]
                assert time.time() < deadline, 'no save of iteration 4'
                time.sleep(0.2)
            proc.send_signal(signal.SIGKILL)  # half of iter_4 is on disk
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == -signal.SIGKILL
    # the interrupted save left no file under the checkpoint's name, and
    # the previous checkpoint was kept
    assert not (work / 'iter_4.pth').exists()
    assert checkpoint_readable(str(work / 'iter_2.pth'))
    assert (work / 'last_checkpoint').read_text().strip().endswith(
        'iter_2.pth')

    out = _resume(cfg, work)
    assert 'resumed epoch: 0, iter: 2' in out
    assert f'Iter(train) [3/{MAX_ITERS}]' in out
    assert f'Iter(train) [1/{MAX_ITERS}]' not in out
    assert _final_iter(work) == MAX_ITERS
    # max_keep_ckpts still holds: only the last checkpoint remains
    assert sorted(p.name for p in work.glob('iter_*.pth')) == [
        f'iter_{MAX_ITERS}.pth']


def test_resume_skips_a_truncated_last_checkpoint(tmp_path, texture_data):
    cfg = write_binary_config(tmp_path / 'trunc.py', texture_data,
                              iters=MAX_ITERS, ckpt_interval=2)
    work = tmp_path / 'work'
    subprocess.run(
        [sys.executable, TRAIN, str(cfg), '--work-dir', str(work),
         '--cfg-options', 'train_cfg.max_iters=4'], cwd=str(REPO_ROOT),
        env=_env(), check=True, stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT, timeout=600)
    last = work / 'iter_4.pth'
    assert (work / 'last_checkpoint').read_text().strip() == str(last)
    data = last.read_bytes()
    last.write_bytes(data[:len(data) // 3])  # e.g. lost on a full disk

    out = _resume(cfg, work)
    assert re.search(r'last checkpoint \S*iter_4\.pth is unreadable', out)
    assert 'resumed epoch: 0, iter: 2' in out
    assert _final_iter(work) == MAX_ITERS


def test_latest_readable_checkpoint(tmp_path):
    for it in (2, 4, 6):
        torch.save({'meta': dict(iter=it)}, tmp_path / f'iter_{it}.pth')
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_6.pth'))
    assert latest_readable_checkpoint(str(tmp_path)) == str(
        tmp_path / 'iter_6.pth')
    # garbage in the newest two: the third one is taken
    (tmp_path / 'iter_6.pth').write_bytes(b'\0' * 100)
    data = (tmp_path / 'iter_4.pth').read_bytes()
    (tmp_path / 'iter_4.pth').write_bytes(data[:-10])
    assert not checkpoint_readable(str(tmp_path / 'iter_4.pth'))
    assert latest_readable_checkpoint(str(tmp_path)) == str(
        tmp_path / 'iter_2.pth')
    # a last_checkpoint naming a deleted file falls back too
    (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_8.pth'))
    assert latest_readable_checkpoint(str(tmp_path)) == str(
        tmp_path / 'iter_2.pth')
    (tmp_path / 'iter_2.pth').unlink()
    with pytest.raises(FileNotFoundError, match='no readable checkpoint'):
        latest_readable_checkpoint(str(tmp_path))
    # an empty work dir: nothing to resume
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert latest_readable_checkpoint(str(empty)) is None


def test_a_flipped_byte_makes_a_checkpoint_unreadable(tmp_path):
    path = tmp_path / 'iter_1.pth'
    torch.save({'w': torch.arange(1000.)}, path)
    assert checkpoint_readable(str(path))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert not checkpoint_readable(str(path))
