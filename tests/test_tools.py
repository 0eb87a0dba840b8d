"""tools/: train + test through the real scripts, argument parity with mmseg
1.2.2, the picture writer, the dataset CLI and the launcher scripts."""
import importlib.util
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import mmseg_didb  # noqa: F401  (compat: weights_only loading)
from mmseg_didb.datasets.texture_maker import CLASSES, read_meta


def _load_tool(repo_root: Path, name: str):
    spec = importlib.util.spec_from_file_location(
        f'_didb_tool_{name}', repo_root / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_two_iterations(tiny_run):
    work_dir, out = tiny_run
    assert 'Iter(train) [2/2]' in out
    assert (work_dir / 'iter_1.pth').is_file()
    assert (work_dir / 'iter_2.pth').is_file()
    assert (work_dir / 'last_checkpoint').read_text().strip().endswith(
        'iter_2.pth')
    ckpt = torch.load(work_dir / 'iter_2.pth', map_location='cpu')
    assert ckpt['meta']['iter'] == 2
    assert tuple(ckpt['meta']['dataset_meta']['classes']) == CLASSES
    # The final validation of the run (IoUMetric) ran on the 4 images.
    assert re.search(r'Iter\(val\) \[4/4\].*mIoU', out)


def test_test_tool_prints_metrics(tiny_run, tiny_config, tmp_path, run_tool,
                                  texture_data):
    work_dir, _ = tiny_run
    out_dir = tmp_path / 'preds'
    proc = run_tool([
        'tools/test.py', tiny_config, work_dir / 'iter_2.pth', '--work-dir',
        tmp_path / 'test', '--out', out_dir
    ])
    match = re.search(
        r'aAcc: ([0-9.]+)\s+mIoU: ([0-9.]+)\s+mAcc: ([0-9.]+)', proc.stdout)
    assert match, proc.stdout[-3000:]
    values = [float(v) for v in match.groups()]
    assert all(0.0 <= v <= 100.0 for v in values)
    # Per-class table of IoUMetric.
    for name in CLASSES:
        assert re.search(rf'\|\s*{name}\s*\|', proc.stdout)
    # --out: one prediction PNG per validation image (labels 0..K-1).
    preds = sorted(out_dir.glob('*.png'))
    assert len(preds) == len(read_meta(str(texture_data))['images']
                             ['validation'])
    pred = cv2.imread(str(preds[0]), cv2.IMREAD_UNCHANGED)
    assert pred.shape == (64, 64) and pred.max() < len(CLASSES)


def test_visualize_demo_writes_picture(tiny_run, tiny_config, tmp_path,
                                       run_tool):
    work_dir, _ = tiny_run
    out = tmp_path / 'pic.png'
    run_tool([
        'tools/visualize_demo.py', tiny_config, work_dir / 'iter_2.pth',
        '--out', out, '--num', '2', '--scale', '1'
    ])
    picture = cv2.imread(str(out))
    assert picture is not None
    # two rows of three 64x64 panels (plus separators, caption, legend)
    assert picture.shape[1] == 3 * 64 + 2 * 4
    assert picture.shape[0] > 2 * 64
    # The ground-truth panel of the first row (under its caption) shows
    # palette colours.
    gt_panel = picture[18:18 + 64, 64 + 4:2 * 64 + 4, ::-1]
    colours = {tuple(c) for c in gt_panel.reshape(-1, 3)}
    palette = {tuple(c) for c in mmseg_didb.datasets.texture_maker.PALETTE}
    assert colours & palette


def _mmseg_args(name, argv, monkeypatch, repo_root):
    """What the plugin's tools/<name>.py hands mmseg's own script: the
    script path run and its command line, parsed by mmseg's parser."""
    import runpy

    from mmseg_didb.engine.mmseg_tools import tool_path
    seen = {}

    def fake_run_path(path, run_name=None):
        seen['path'], seen['argv'] = path, list(sys.argv)

    monkeypatch.setattr(runpy, 'run_path', fake_run_path)
    monkeypatch.delenv('LOCAL_RANK', raising=False)
    # recorded, so that the tool's own setting is undone after the test
    monkeypatch.setenv('MMSEG_DIDB_UNSAFE_LOAD', '0')
    _load_tool(repo_root, name).main(argv)
    assert seen['path'] == tool_path(name)
    # mmseg's own parser on what it was given
    spec = importlib.util.spec_from_file_location(f'_mmseg_{name}',
                                                  seen['path'])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, 'argv', seen['argv'])
    return module.parse_args()


def test_train_runs_mmseg_train_with_its_arguments(repo_root, monkeypatch):
    argv = ['cfg.py', '--work-dir', 'wd', '--resume', '--amp',
            '--cfg-options', 'a=1', 'b.c=[1,2]', '--launcher', 'pytorch',
            '--local-rank', '3', '--unsafe-load']
    args = _mmseg_args('train', argv, monkeypatch, repo_root)
    assert args.config == 'cfg.py' and args.work_dir == 'wd'
    assert args.resume and args.amp and args.launcher == 'pytorch'
    assert args.cfg_options == {'a': 1, 'b.c': [1, 2]}
    assert os.environ['LOCAL_RANK'] == '3'
    # the plugin option is the plugin's: mmseg's parser never saw it
    assert os.environ['MMSEG_DIDB_UNSAFE_LOAD'] == '1'


def test_tool_destroys_the_launchers_process_group(repo_root, monkeypatch,
                                                  tmp_path):
    """A launched run leaves its gloo group open; the plugin's tool shuts it
    down after a success (gloo threads torn down at interpreter exit abort
    the process otherwise)."""
    import runpy

    import torch.distributed as dist
    store = dist.FileStore(str(tmp_path / 'store'), 1)

    def fake_run_path(path, run_name=None):
        dist.init_process_group('gloo', store=store, rank=0, world_size=1)

    monkeypatch.setattr(runpy, 'run_path', fake_run_path)
    monkeypatch.setenv('MMSEG_DIDB_UNSAFE_LOAD', '0')
    try:
        _load_tool(repo_root, 'test').main(['cfg.py', 'ckpt.pth'])
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_test_runs_mmseg_test_with_its_arguments(repo_root, monkeypatch):
    argv = ['cfg.py', 'ckpt.pth', '--work-dir', 'wd', '--out', 'o',
            '--show-dir', 's', '--tta', '--launcher', 'slurm',
            '--cfg-options', 'x=2', '--packed']
    args = _mmseg_args('test', argv, monkeypatch, repo_root)
    assert (args.config, args.checkpoint, args.out, args.show_dir) == \
        ('cfg.py', 'ckpt.pth', 'o', 's')
    assert args.tta and args.launcher == 'slurm'
    assert args.cfg_options == {'x': 2}
    assert os.environ['MMSEG_DIDB_UNSAFE_LOAD'] == '0'


def test_make_texture_dataset_cli(repo_root, tmp_path, capsys):
    tool = _load_tool(repo_root, 'make_texture_dataset')
    out = tmp_path / 'tm'
    argv = [
        'make_texture_dataset.py',
        str(out), '--num-train', '2', '--num-val', '1', '--size', '32'
    ]
    old = sys.argv
    try:
        sys.argv = argv
        tool.main()
        first = capsys.readouterr().out
        sys.argv = argv
        tool.main()
        second = capsys.readouterr().out
    finally:
        sys.argv = old
    assert 'training: 2 images' in first
    assert 'already built' in second
    assert len(list((out / 'images' / 'training').glob('*.png'))) == 2
    assert len(list((out / 'annotations' / 'validation').glob('*.png'))) == 1


def _fake_command(folder: Path, name: str) -> None:
    """An executable that prints its arguments, one per line."""
    path = folder / name
    path.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_dist_train_uses_torchrun(repo_root, tmp_path):
    _fake_command(tmp_path, 'python')
    env = dict(os.environ, PYTHON=str(tmp_path / 'python'), NNODES='2',
               NODE_RANK='1', PORT='29999', MASTER_ADDR='10.0.0.1')
    proc = subprocess.run(
        ['bash', 'tools/dist_train.sh', 'cfg.py', '4', '--amp'],
        cwd=repo_root, env=env, stdout=subprocess.PIPE, text=True,
        check=True)
    args = proc.stdout.split('\n')
    assert args[:2] == ['-m', 'torch.distributed.run']
    for expected in ('--nnodes=2', '--node_rank=1', '--master_port=29999',
                     '--master_addr=10.0.0.1', '--nproc_per_node=4', 'cfg.py',
                     '--amp'):
        assert expected in args
    assert args[args.index('--launcher') + 1] == 'pytorch'
    assert Path(args[args.index('cfg.py') - 1]).name == 'train.py'


def test_dist_test_uses_torchrun(repo_root, tmp_path):
    _fake_command(tmp_path, 'python')
    env = dict(os.environ, PYTHON=str(tmp_path / 'python'))
    proc = subprocess.run(
        ['bash', 'tools/dist_test.sh', 'cfg.py', 'ckpt.pth', '2', '--tta'],
        cwd=repo_root, env=env, stdout=subprocess.PIPE, text=True,
        check=True)
    args = proc.stdout.split('\n')
    assert args[:2] == ['-m', 'torch.distributed.run']
    assert '--nproc_per_node=2' in args and '--tta' in args
    i = args.index('cfg.py')
    assert Path(args[i - 1]).name == 'test.py' and args[i + 1] == 'ckpt.pth'


def test_slurm_train_uses_srun(repo_root, tmp_path):
    _fake_command(tmp_path, 'srun')
    env = dict(os.environ, PATH=f'{tmp_path}:{os.environ["PATH"]}', GPUS='16',
               GPUS_PER_NODE='8', PYTHON='python')
    proc = subprocess.run([
        'bash', 'tools/slurm_train.sh', 'part', 'job', 'cfg.py', '--work-dir',
        'wd'
    ],
                          cwd=repo_root,
                          env=env,
                          stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL,
                          text=True,
                          check=True)
    args = proc.stdout.split('\n')
    for expected in ('-p', 'part', '--job-name=job', '--ntasks=16',
                     '--ntasks-per-node=8', '--gres=gpu:8', 'cfg.py',
                     '--launcher=slurm', '--work-dir', 'wd'):
        assert expected in args


@pytest.mark.parametrize('script', [
    'setup_env.sh', 'run_tests.sh', 'demo.sh', 'dist_train.sh',
    'dist_test.sh', 'slurm_train.sh', 'slurm_test.sh'
])
def test_shell_scripts_parse(repo_root, script):
    subprocess.run(['bash', '-n', str(repo_root / 'tools' / script)],
                   check=True)


def test_palette_matches_classes():
    palette = np.asarray(mmseg_didb.datasets.texture_maker.PALETTE)
    assert palette.shape == (len(CLASSES), 3)
    assert len({tuple(c) for c in palette}) == len(CLASSES)
