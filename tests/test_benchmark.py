"""Benchmark harness smoke tests (tiny model, 32 px, one repeat; no timing is
asserted, only that every phase runs and reports)."""
import json
import math

import mmseg_didb  # noqa: F401  (first: installs the mmcv-lite shims)
import torch

from mmseg_didb.analysis import build_segmentor
from mmseg_didb.analysis.benchmark import (benchmark_isolated,
                                           benchmark_model, format_results)
from conftest import tiny_segmentor

torch.set_num_threads(1)


def tiny_cfg(preset: str = 'didb') -> dict:
    return dict(default_scope='mmseg', model=tiny_segmentor(
        preset, head='fcn', embed_dims=16, test_cfg=dict(mode='whole')))


def test_benchmark_model_runs_train_and_infer():
    before = {}

    def build():
        model = build_segmentor(tiny_cfg())
        before.update({k: v.clone() for k, v in model.state_dict().items()})
        build.model = model
        return model

    res = benchmark_model(build, 'tiny', shape=(32, 32), batch_size=2,
                          warmup=0, repeats=1, device='cpu')
    assert len(res.train.times) == 1 and len(res.infer.times) == 1
    assert res.train.median > 0 and res.infer.median > 0
    assert res.params == sum(p.numel() for p in build.model.parameters())
    # the training step really optimised the weights
    after = build.model.state_dict()
    assert any(not torch.equal(after[k], v) for k, v in before.items()
               if v.is_floating_point())
    text = format_results([res, res], 'cpu', (32, 32), 2)
    assert 'ratio tiny / tiny' in text and '1.00x' in text


def test_benchmark_isolated_child_process():
    res = benchmark_isolated(tiny_cfg('fp'), 'fp', threads=1,
                             phases=('infer', ), shape=(32, 32),
                             batch_size=1, warmup=0, repeats=1, device='cpu')
    assert len(res.infer.times) == 1 and not res.train.times
    assert math.isnan(res.train.median)
    assert res.infer.peak_bytes is None or res.infer.peak_bytes >= 0


def test_benchmark_cli_vs_fp(tmp_path, capsys):
    cfg_path = tmp_path / 'tiny.py'
    cfg = tiny_cfg()
    cfg_path.write_text(f'default_scope = "mmseg"\nmodel = {cfg["model"]!r}\n')
    from tools.analysis import benchmark as tool
    out = tool.main([str(cfg_path), '--shape', '32', '--repeats', '1',
                     '--warmup', '0', '--no-isolate', '--device', 'cpu',
                     '--json', str(tmp_path / 'b.json')])
    printed = capsys.readouterr().out
    assert 'ratio tiny / fp (preset=fp)' in printed
    data = json.loads((tmp_path / 'b.json').read_text())
    assert set(data['results']) == {'tiny', 'fp (preset=fp)'}
    assert data == json.loads(json.dumps(out))
    for r in data['results'].values():
        assert r['train']['median_s'] > 0 and r['infer']['median_s'] > 0


def test_vs_mmseg_picks_the_stock_config_of_the_architecture():
    from mmengine.config import Config

    from mmseg_didb.analysis.builder import comparison_config
    swin = comparison_config(Config(tiny_cfg()), 'mmseg')
    assert swin.model.backbone.type == 'SwinTransformer'
    assert swin.model.backbone.embed_dims == 96
    assert swin.model.decode_head.type == 'UPerHead'
    vit_cfg = Config.fromfile('configs/didb_deit_s_ade20k.py')
    vit = comparison_config(vit_cfg, 'mmseg')
    assert vit.model.backbone.type == 'VisionTransformer'
    assert vit.model.backbone.embed_dims == 384
    bad = Config(tiny_cfg())
    bad.model.backbone.type = 'ResNetV1c'
    import pytest
    with pytest.raises(ValueError, match='stock configs'):
        comparison_config(bad, 'mmseg')


def test_ratios_of_the_first_model_to_each_other():
    res = benchmark_model(lambda: build_segmentor(tiny_cfg()), 'a',
                          shape=(32, 32), batch_size=2, warmup=0, repeats=1,
                          device='cpu', phases=('infer', ))
    other = benchmark_model(lambda: build_segmentor(tiny_cfg('fp')), 'b',
                            shape=(32, 32), batch_size=2, warmup=0,
                            repeats=1, device='cpu', phases=('infer', ))
    text = format_results([res, other, other], 'cpu', (32, 32), 2)
    assert text.count('ratio a / b') == 2


def test_benchmark_compile_wraps_the_training_loss(monkeypatch, tmp_path):
    """``--compile``: a second row whose training step's ``model.loss`` goes
    through torch.compile (a recording stand-in here: compiling takes
    minutes), with the compiling warm-up steps reported."""
    import pytest
    compiled = []

    def fake_compile(fn, **kwargs):
        compiled.append(fn.__name__)
        return fn

    monkeypatch.setattr(torch, 'compile', fake_compile)
    cfg_path = tmp_path / 'tiny.py'
    cfg_path.write_text(
        f'default_scope = "mmseg"\nmodel = {tiny_cfg()["model"]!r}\n')
    from tools.analysis import benchmark as tool
    out = tool.main([str(cfg_path), '--shape', '32', '--repeats', '1',
                     '--warmup', '2', '--no-isolate', '--device', 'cpu',
                     '--vs', 'none', '--compile', '--json', '-'])
    assert compiled == ['loss']
    names = list(out['results'])
    assert len(names) == 2 and names[1].endswith('(torch.compile)')
    assert len(out['results'][names[1]]['train']['warmup_s']) == 2
    with pytest.raises(SystemExit):
        tool.main([str(cfg_path), '--compile', '--warmup', '1'])
    with pytest.raises(ValueError, match='warmup'):
        benchmark_model(lambda: build_segmentor(tiny_cfg()), 'x',
                        shape=(32, 32), warmup=1, compile=True)


def test_benchmark_mmap_threshold_applies_to_every_row(monkeypatch, tmp_path):
    """``--mmap-threshold``: set once for every benchmarked model (here in
    this process, ``--no-isolate``) and named in the report; out of range
    is a usage error."""
    import pytest
    from tools.analysis import benchmark as tool
    calls = []
    monkeypatch.setattr(tool, 'set_malloc_mmap_threshold',
                        lambda n: calls.append(n) or True)
    cfg_path = tmp_path / 'tiny.py'
    cfg_path.write_text(
        f'default_scope = "mmseg"\nmodel = {tiny_cfg()["model"]!r}\n')
    out = tool.main([str(cfg_path), '--shape', '32', '--repeats', '1',
                     '--warmup', '0', '--no-isolate', '--device', 'cpu',
                     '--phases', 'infer', '--mmap-threshold', '131072',
                     '--json', '-'])
    assert calls == [131072]
    assert out['device'].endswith('malloc mmap threshold 131072 bytes')
    assert set(out['results']) == {'tiny', 'fp (preset=fp)'}
    with pytest.raises(SystemExit):
        tool.main([str(cfg_path), '--mmap-threshold', str(64 * 2**20)])


def test_benchmark_isolated_child_sets_the_mmap_threshold(monkeypatch):
    """The body of :func:`benchmark_isolated`'s child process sets the
    threshold before it builds the model (run here, in this process, with
    the setter recorded)."""
    from mmseg_didb.analysis import benchmark as bench
    from mmseg_didb.engine import allocator
    events = []
    monkeypatch.setattr(allocator, 'set_malloc_mmap_threshold',
                        lambda n: events.append(('threshold', n)))
    monkeypatch.setattr(bench, 'benchmark_model',
                        lambda build, name, **kw: events.append(
                            ('build', name)) or 'result')

    class Queue(list):
        put = list.append

    queue = Queue()
    bench._isolated_child(tiny_cfg('fp'), 'fp',
                          dict(mmap_threshold=131072, threads=None), queue)
    assert queue == [('ok', 'result')]
    assert events == [('threshold', 131072), ('build', 'fp')]
