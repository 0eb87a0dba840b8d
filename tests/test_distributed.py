"""torch.distributed on a machine without GPUs: tools/dist_train.sh and
tools/dist_test.sh with 2 CPU processes (gloo), replicas that stay equal,
lazily initialised binarizer scales averaged over ranks, and a clear stop for
SyncBN."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, write_binary_config

# The tiny binary demo model with 'bit' (BiT's lazily initialised alpha in
# every activation binarizer; the head's running input magnitudes), and a
# probe hook.
PROBE_LINES = """
custom_imports = dict(imports=['mmseg_didb', 'dist_probe'],
                      allow_failed_imports=False)
param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False)]
custom_hooks = [dict(type='DistProbeHook', out_dir={out!r})]
"""

# Records, per rank, each lazily initialised scale with the local statistic
# it was computed from, and the final state dict.
PROBE = r'''
import json, os
import torch
import torch.distributed as dist
from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from mmseg_didb.binary.quantizers import ElasticSign, RunningMagnitude

_local = {}


def _wrap(cls, method, stat):
    orig = getattr(cls, method)

    def wrapped(self, x, *a, **k):
        first = not bool(self.initialized)
        local = stat(self, x) if first else None
        out = orig(self, x, *a, **k)
        if first:  # the scale as initialised, before any optimizer step
            value = (self.alpha.detach().reshape(-1).tolist()
                     if isinstance(self, ElasticSign) else
                     self.magnitude.tolist())
            _local[id(self)] = dict(local=local, value=value)
        return out

    setattr(cls, method, wrapped)


def _magnitude_stat(self, x):
    dim = self.channel_dim % x.dim()
    red = [d for d in range(x.dim()) if d != dim]
    return x.detach().float().abs().mean(dim=red).tolist()


_wrap(ElasticSign, '_lazy_init',
      lambda self, x: [2 * float(x.detach().float().abs().mean())])
_wrap(RunningMagnitude, '_update', _magnitude_stat)


@HOOKS.register_module()
class DistProbeHook(Hook):
    def __init__(self, out_dir):
        self.out_dir = out_dir

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        if runner.iter != 0:
            return
        model = runner.model.module if hasattr(runner.model, 'module') \
            else runner.model
        rows = {}
        for name, m in model.named_modules():
            if id(m) not in _local:
                continue
            rows[name] = _local[id(m)]
        rank = dist.get_rank()
        with open(os.path.join(self.out_dir, f'init_rank{rank}.json'),
                  'w') as f:
            json.dump(dict(world=dist.get_world_size(), scales=rows), f)

    def after_train(self, runner):
        model = runner.model.module if hasattr(runner.model, 'module') \
            else runner.model
        torch.save(model.state_dict(), os.path.join(
            self.out_dir, f'final_rank{dist.get_rank()}.pth'))
'''


def dist_run(script, args, tmp_path, timeout=600):
    """``bash tools/<script> args`` (or ``python tools/<script>``), with the
    probe module importable."""
    env = dict(os.environ, PYTHONPATH=str(tmp_path), PYTHON=sys.executable,
               OMP_NUM_THREADS='1', PORT=str(29500 + os.getpid() % 1000))
    cmd = ['bash'] if script.endswith('.sh') else [sys.executable]
    return subprocess.run(cmd + [str(REPO_ROOT / 'tools' / script),
                                 *map(str, args)], cwd=str(REPO_ROOT),
                          env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True,
                          timeout=timeout)


def write_config(tmp_path, texture_data, norm='BN'):
    (tmp_path / 'dist_probe.py').write_text(PROBE)
    out = tmp_path / 'probe'
    out.mkdir(exist_ok=True)
    cfg = write_binary_config(tmp_path / f'dist_{norm}.py', texture_data,
                              preset='bit', norm=norm,
                              extra=PROBE_LINES.format(out=str(out)))
    return cfg, out


def test_two_cpu_processes_train_equal_replicas_and_test(tmp_path,
                                                         texture_data):
    cfg, out = write_config(tmp_path, texture_data)
    work = tmp_path / 'work'
    proc = dist_run('dist_train.sh', [cfg, 2, '--work-dir', work], tmp_path)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert 'gloo' in proc.stdout

    # lazily initialised scales: equal on both ranks, the mean of the two
    # local statistics
    ranks = [json.loads((out / f'init_rank{r}.json').read_text())
             for r in (0, 1)]
    assert ranks[0]['world'] == 2
    scales = ranks[0]['scales']
    assert len(scales) > 20 and scales.keys() == ranks[1]['scales'].keys()
    kinds = {name.rsplit('.', 1)[-1] for name in scales}
    assert 'input_scale' in kinds  # running magnitudes of the head
    for name, row in scales.items():
        other = ranks[1]['scales'][name]
        assert row['value'] == other['value'], name
        mean = (torch.tensor(row['local']) + torch.tensor(other['local'])) / 2
        torch.testing.assert_close(torch.tensor(row['value']),
                                   mean.clamp_min(1e-8), rtol=1e-5,
                                   atol=1e-7)
        # the ranks saw different images, so averaging mattered
    assert any(r['local'] != ranks[1]['scales'][n]['local']
               for n, r in scales.items())

    # identical replicas after training: every parameter and every
    # all-reduced buffer (BatchNorm statistics are per rank in mmengine's
    # DDP, broadcast_buffers=False)
    a, b = (torch.load(out / f'final_rank{r}.pth') for r in (0, 1))
    assert a.keys() == b.keys()
    for key in a:
        if 'running_' in key or 'num_batches_tracked' in key:
            continue
        assert torch.equal(a[key], b[key]), key

    # the checkpoint tests, in one process and in two
    ckpt = work / 'iter_3.pth'
    assert ckpt.is_file()
    test = dist_run('test.py', [cfg, ckpt, '--work-dir', tmp_path / 'test1',
                                '--cfg-options', 'custom_hooks=[]'], tmp_path)
    assert test.returncode == 0, test.stdout[-6000:]
    assert 'mIoU' in test.stdout
    proc = dist_run('dist_test.sh', [cfg, ckpt, 2, '--work-dir',
                                     tmp_path / 'test2', '--cfg-options',
                                     'custom_hooks=[]'], tmp_path)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert 'mIoU' in proc.stdout


def test_sync_bn_on_cpu_stops_with_a_message_naming_bn(tmp_path,
                                                       texture_data):
    cfg, _ = write_config(tmp_path, texture_data, norm='SyncBN')
    proc = dist_run('dist_train.sh', [cfg, 2, '--work-dir',
                                      tmp_path / 'work'], tmp_path)
    assert proc.returncode != 0
    assert 'SyncBatchNorm' in proc.stdout
    assert "dict(type='BN'" in proc.stdout
