"""tools/launch.sh and mmseg's wrapper names: the command each one runs."""
import os
import os.path as osp
import stat
import subprocess

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def _fake(path, name):
    """An executable that prints its name and arguments, one per line."""
    exe = path / name
    exe.write_text('#!/usr/bin/env bash\necho "' + name + '"\n'
                   'for a in "$@"; do echo "$a"; done\n')
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return str(exe)


def _run(script, args, tmp_path, **env):
    python = _fake(tmp_path, 'python')
    _fake(tmp_path, 'srun')
    full = dict(os.environ, PYTHON=python,
                PATH=f'{tmp_path}:{os.environ["PATH"]}', **env)
    return subprocess.run(['bash', osp.join(ROOT, 'tools', script), *args],
                          capture_output=True, text=True, env=full)


def test_dist_train_and_test_run_torchrun_with_the_tool(tmp_path):
    out = _run('dist_train.sh', ['cfg.py', '3', '--amp'], tmp_path,
               PORT='29999').stdout.split('\n')
    assert out[:3] == ['python', '-m', 'torch.distributed.run']
    assert '--nproc_per_node=3' in out and '--master_port=29999' in out
    i = out.index(osp.join(ROOT, 'tools', 'train.py'))
    assert out[i + 1:i + 5] == ['cfg.py', '--launcher', 'pytorch', '--amp']
    out = _run('dist_test.sh', ['cfg.py', 'w.pth', '2'], tmp_path
               ).stdout.split('\n')
    i = out.index(osp.join(ROOT, 'tools', 'test.py'))
    assert out[i + 1:i + 5] == ['cfg.py', 'w.pth', '--launcher', 'pytorch']
    assert '--nproc_per_node=2' in out


def test_slurm_wrappers_run_srun_with_the_tool(tmp_path):
    out = _run('slurm_test.sh', ['part', 'job', 'cfg.py', 'w.pth', '--x'],
               tmp_path, GPUS='8').stdout.split('\n')
    assert out[:3] == ['srun', '-p', 'part']
    assert '--job-name=job' in out and '--ntasks=8' in out
    i = out.index(osp.join(ROOT, 'tools', 'test.py'))
    assert out[i - 2:i] == [str(tmp_path / 'python'), '-u']
    assert out[i + 1:i + 5] == ['cfg.py', 'w.pth', '--launcher=slurm', '--x']


@pytest.mark.parametrize('script,args', [
    ('dist_train.sh', []),
    ('dist_train.sh', ['cfg.py']),
    ('dist_test.sh', ['cfg.py', 'w.pth']),
    ('slurm_train.sh', ['part', 'job']),
    ('launch.sh', ['dist', 'deploy', 'cfg.py', '1']),
])
def test_missing_arguments_print_the_usage(tmp_path, script, args):
    proc = _run(script, args, tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith('usage:')
    assert 'launch.sh dist train CONFIG GPUS' in proc.stderr
    assert not proc.stdout
