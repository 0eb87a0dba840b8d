"""A training run killed with SIGKILL after its first checkpoint resumes with
``--resume`` where it stopped: saved iteration, optimizer state and
learning-rate schedule (no second warm-up), and finishes at max_iters."""
import os
import re
import signal
import subprocess
import sys
import time

import torch

from conftest import REPO_ROOT, write_binary_config

SCHEDULE = """
optim_wrapper = dict(optimizer=dict(lr=1e-3))
# warm-up over the first 6 iterations: a resume that restarted the
# schedule would log the start value again
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False,
                        begin=0, end=6)]
"""
MAX_ITERS = 8


def lr_at(log: str, it: int) -> float:
    m = re.search(rf'Iter\(train\) \[\s*{it}/{MAX_ITERS}\].*? lr: ([0-9.e+-]+)',
                  log)
    assert m, f'no log line for iteration {it}:\n{log[-3000:]}'
    return float(m.group(1))


def uninterrupted(steps: int):
    """mmengine's LinearLR of SCHEDULE after ``steps`` iterations: (lr,
    scheduler state)."""
    from mmengine.optim.scheduler import LinearLR
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    sched = LinearLR(opt, start_factor=0.1, by_epoch=False, begin=0, end=6)
    for _ in range(steps):
        opt.step()
        sched.step()
    return opt.param_groups[0]['lr'], sched.state_dict()


def test_sigkill_then_resume_continues_the_run(tmp_path, texture_data):
    cfg = write_binary_config(tmp_path / 'resume.py', texture_data,
                              iters=MAX_ITERS, ckpt_interval=2,
                              extra=SCHEDULE)
    work = tmp_path / 'work'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    log_path = tmp_path / 'first.log'
    with open(log_path, 'w') as log:
        proc = subprocess.Popen(
            [sys.executable, str(REPO_ROOT / 'tools' / 'train.py'), str(cfg),
             '--work-dir', str(work)], cwd=str(REPO_ROOT), env=env,
            stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 300
            while not (work / 'last_checkpoint').is_file():
                assert proc.poll() is None, log_path.read_text()[-3000:]
                assert time.time() < deadline, 'no checkpoint in 300 s'
                time.sleep(0.2)
            proc.send_signal(signal.SIGKILL)  # no clean-up, as a lost node
            proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == -signal.SIGKILL
    saved = (work / 'last_checkpoint').read_text().strip()
    start = int(re.search(r'iter_(\d+)\.pth$', saved).group(1))
    assert start < MAX_ITERS
    first = log_path.read_text()

    resumed = subprocess.run(
        [sys.executable, str(REPO_ROOT / 'tools' / 'train.py'), str(cfg),
         '--work-dir', str(work), '--resume'], cwd=str(REPO_ROOT), env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=600)
    out = resumed.stdout
    assert resumed.returncode == 0, out[-4000:]
    assert f'resumed epoch: 0, iter: {start}' in out
    # it continues at the saved iteration and ends at max_iters
    assert f'Iter(train) [{start + 1}/{MAX_ITERS}]' in out
    assert f'Iter(train) [1/{MAX_ITERS}]' not in out
    assert f'Iter(train) [{MAX_ITERS}/{MAX_ITERS}]' in out
    # the schedule continued: the lr of the next iteration is the one an
    # uninterrupted warm-up has there (mmengine's own LinearLR, stepped
    # `start` times), above the first iteration's
    assert abs(lr_at(out, start + 1) - uninterrupted(start)[0]) < 1e-10
    assert lr_at(out, start + 1) > lr_at(first, 1)
    final = torch.load(work / f'iter_{MAX_ITERS}.pth', map_location='cpu',
                       weights_only=True)
    assert final['meta']['iter'] == MAX_ITERS
    assert final['param_schedulers'][0]['last_step'] == \
        uninterrupted(MAX_ITERS)[1]['last_step']
    # AdamW's step counter continued from the saved optimizer state
    steps = {float(s['step']) for s in final['optimizer']['state'].values()}
    assert steps == {float(MAX_ITERS)}, (start, steps)
