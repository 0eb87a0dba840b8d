"""tools/analysis/peer_bench.py at tiny size: the packed model beside the
ONNX Runtime and OpenVINO engines of its FP counterpart (skipped without the
optional engines)."""
import json

import pytest

from conftest import write_binary_config
from mmseg_didb.analysis.peers import ENGINES, missing_peers

needs_peers = pytest.mark.skipif(
    bool(missing_peers()),
    reason=f'the optional peer engines are not installed '
    f'({", ".join(missing_peers())}): pip install -e .[peers]')


@needs_peers
def test_peer_bench_times_and_checks_every_engine(tmp_path, texture_data,
                                                  run_tool):
    config = write_binary_config(tmp_path / 'tiny.py', texture_data)
    out = tmp_path / 'peers.json'
    proc = run_tool(['tools/analysis/peer_bench.py', config, '--models',
                     'counterpart', '--calib', '2', '--repeats', '2',
                     '--warmup', '1', '--work-dir', tmp_path / 'work',
                     '--json', out])
    result = json.loads(out.read_text())
    rows = result['rows']
    assert [r['engine'] for r in rows] == ['packed', *ENGINES]
    # the packed model is the fake-quantized one, pixel for pixel
    assert rows[0]['agreement'] == 1.0
    # the FP32 export computes the PyTorch model (up to float rounding);
    # INT8 stays close to it
    assert rows[1]['agreement'] > 0.99
    assert all(r['agreement'] > 0.8 for r in rows[2:]), rows
    for r in rows:
        assert set(r['ms']) == {'1', '2'} and all(
            v > 0 for v in r['ms'].values())
    assert 0 < result['packed_kernel_share'] < 1
    assert set(result['packed_vs_best_int8']) == {'1', '2'}
    assert 'packed vs the fastest INT8 engine' in proc.stdout
    assert (tmp_path / 'work' / 'counterpart_int8.onnx').is_file()


def test_missing_engines_name_the_install_command(monkeypatch):
    from mmseg_didb.analysis import peers
    monkeypatch.setattr(peers, 'missing_peers', lambda: ['openvino'])
    with pytest.raises(ImportError, match=r'pip install -e \.\[peers\]'):
        peers.require_peers()
