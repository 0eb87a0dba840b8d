"""Checkpoints load with weights-only unpickling everywhere: a crafted pickle
whose ``__reduce__`` would write a marker file is refused by every entry
point (the marker never appears), with an error naming the opt-in; the
opt-in loads it and says so in the log."""
import importlib.util
import io
import json
import logging
import os.path as osp
import warnings

import mmseg_didb  # noqa: F401  (first: installs shims, allowlists)
import pytest
import torch
from mmengine.logging import HistoryBuffer, MessageHub
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS

from conftest import REPO_ROOT, log_records
from mmseg_didb.models.utils import (UnsafeCheckpointError, read_checkpoint,
                                     read_state_dict)

init_default_scope('mmseg')
SWIN = dict(type='DIDBSwin', preset='react', embed_dims=16, depths=(1, 1),
            num_heads=(1, 2), window_size=4, pretrain_img_size=32,
            out_indices=(0, 1), drop_path_rate=0.)


class Payload:
    """Unpickling this writes ``path`` (what an attacker's code would do)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (exec, (f'open({self.path!r}, "w").write("pwned")', ))


@pytest.fixture
def evil(tmp_path):
    """A checkpoint with valid weights of a tiny DIDBSwin and a payload."""
    torch.manual_seed(0)
    backbone = MODELS.build(SWIN)
    marker = tmp_path / 'marker'
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {f'backbone.{k}': v
                               for k, v in backbone.state_dict().items()},
                'meta': {'note': Payload(str(marker))}}, path)
    return str(path), marker


def test_read_checkpoint_refuses_and_opt_in_is_logged(evil):
    path, marker = evil
    with pytest.raises(UnsafeCheckpointError) as err:
        read_checkpoint(path)
    assert 'allow_unsafe_load=True' in str(err.value)
    assert '--unsafe-load' in str(err.value)
    with pytest.raises(UnsafeCheckpointError):
        read_state_dict(path)
    assert not marker.exists()
    # the opt-in unpickles (the payload runs: the file really is unsafe)
    # and logs a warning
    with log_records() as records:
        state = read_checkpoint(path, allow_unsafe=True)
    assert 'state_dict' in state and marker.exists()
    assert any('FULL unpickle' in r.getMessage() and
               r.levelno == logging.WARNING for r in records)


def test_runner_checkpoint_with_empty_history_buffer_loads_weights_only(
        tmp_path):
    hub = MessageHub('safe-loading-test')
    hub.update_scalar('train/loss', 1.0)
    hub.log_scalars['train/never_logged'] = HistoryBuffer()
    path = tmp_path / 'runner.pth'
    torch.save({'state_dict': {'w': torch.ones(2)},
                'message_hub': hub.state_dict(),
                'meta': {'iter': 3}}, path)
    ckpt = read_checkpoint(str(path))
    assert torch.equal(ckpt['state_dict']['w'], torch.ones(2))


def test_backbone_init_cfg_and_teacher_refuse(evil):
    path, marker = evil
    backbone = MODELS.build(dict(SWIN, init_cfg=dict(
        type='Pretrained', checkpoint=path, prefix='backbone.')))
    with pytest.raises(UnsafeCheckpointError, match='allow_unsafe_load'):
        backbone.init_weights()
    assert not marker.exists()
    student = dict(
        type='DistillEncoderDecoder',
        backbone=SWIN,
        decode_head=dict(type='FCNHead', in_channels=32, in_index=1,
                         channels=8, num_convs=1, concat_input=False,
                         num_classes=3),
        teacher_config=dict(
            type='EncoderDecoder', backbone=dict(SWIN, preset='fp'),
            decode_head=dict(type='FCNHead', in_channels=32, in_index=1,
                             channels=8, num_convs=1, concat_input=False,
                             num_classes=3)),
        teacher_checkpoint=path)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        model = MODELS.build(student)
    with pytest.raises(UnsafeCheckpointError, match='teacher_allow_unsafe'):
        model.teacher
    assert not marker.exists()
    # the opt-in of the backbone loads the (valid) weights
    backbone = MODELS.build(dict(SWIN, init_cfg=dict(
        type='Pretrained', checkpoint=path, prefix='backbone.',
        allow_unsafe_load=True)))
    backbone.init_weights()
    assert marker.exists()


def load_tool(name):
    spec = importlib.util.spec_from_file_location(
        name, osp.join(str(REPO_ROOT), 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tools_refuse(evil, tmp_path):
    path, marker = evil
    cfg = tmp_path / 'tiny.py'
    cfg.write_text('default_scope = "mmseg"\n'
                   f'model = dict(type="EncoderDecoder", backbone={SWIN!r}, '
                   'decode_head=dict(type="FCNHead", in_channels=32, '
                   'in_index=1, channels=8, num_convs=1, concat_input=False, '
                   'num_classes=3))\n')
    calls = [
        ('export_binary', [str(cfg), path, str(tmp_path / 'out.pth')]),
        ('deploy', [str(cfg), path]),
        ('convert_pretrained', [path, str(tmp_path / 'conv.pth')]),
    ]
    for tool, argv in calls:
        with pytest.raises(UnsafeCheckpointError, match='--unsafe-load'):
            load_tool(tool).main(argv)
        assert not marker.exists(), tool


def test_pretrain_cls_resume_refuses(evil, tmp_path):
    path, marker = evil
    folder = str(tmp_path / 'cls')
    load_tool('make_cls_folder').make_folder(
        folder, classes=('brick', 'grass'), size=32, train_per_class=2,
        val_per_class=1)
    kw = dict(img_size=32, embed_dims=16, depths=[1, 1], num_heads=[1, 2],
              window_size=4)
    argv = [folder, '--model', 'didb_swin_tiny_patch4_window7_224',
            '--preset', 'react', '--model-kwargs', json.dumps(kw),
            '--img-size', '32', '--batch-size', '2', '--max-iters', '1',
            '--num-workers', '0', '--no-progress', '--work-dir',
            str(tmp_path / 'work'), '--resume', path]
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        with pytest.raises(UnsafeCheckpointError):
            load_tool('pretrain_cls').main(argv)
    assert not marker.exists()


def test_runner_load_from_and_resume_refuse(evil, tiny_config, run_tool,
                                           tmp_path):
    """mmengine's loader (load_from of tools/test.py, --resume of
    tools/train.py) unpickles weights-only too, and names the opt-in;
    --unsafe-load opts in, with a warning in the log."""
    path, marker = evil
    proc = run_tool(['tools/test.py', tiny_config, path, '--work-dir',
                     tmp_path / 'test'], check=False)
    assert proc.returncode != 0
    assert 'weights-only loading refused' in proc.stdout
    assert '--unsafe-load' in proc.stdout
    work = tmp_path / 'train'
    work.mkdir()
    (work / 'last_checkpoint').write_text(path)
    proc = run_tool(['tools/train.py', tiny_config, '--work-dir', work,
                     '--resume'], check=False)
    assert proc.returncode != 0
    assert 'weights-only loading refused' in proc.stdout
    assert not marker.exists()
    # the opt-in: the payload runs (the file really is unsafe), and the
    # log says a full unpickle happened
    proc = run_tool(['tools/test.py', tiny_config, path, '--work-dir',
                     tmp_path / 'test2', '--unsafe-load'], check=False)
    assert marker.exists()
    assert 'FULL unpickle' in proc.stdout


def test_pickle_payload_would_really_run(tmp_path):
    """Sanity of the fixture: a plain full unpickle runs the payload."""
    marker = tmp_path / 'm'
    buf = io.BytesIO()
    torch.save({'x': Payload(str(marker))}, buf)
    buf.seek(0)
    torch.load(buf, weights_only=False)
    assert marker.exists()
