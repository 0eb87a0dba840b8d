"""The deployment entry points on a tiny trained binary segmentor:
tools/deploy.py, tools/test.py --packed, tools/analysis/benchmark.py
--packed, and the packed export round trip."""
import re

import pytest

from conftest import write_binary_config


@pytest.fixture(scope='module')
def binary_run(tmp_path_factory, texture_data, run_tool):
    """The tiny fully binary demo segmentor of conftest, trained for 2
    iterations."""
    root = tmp_path_factory.mktemp('binary_run')
    config = write_binary_config(root / 'tiny_binary.py', texture_data,
                                 iters=2, ckpt_interval=2)
    run_tool(['tools/train.py', config, '--work-dir', root / 'work'])
    return config, root / 'work' / 'iter_2.pth'


def test_deploy_tool_checks_and_times_the_packed_model(binary_run, run_tool,
                                                       tmp_path):
    config, ckpt = binary_run
    out = tmp_path / 'packed.pth'
    proc = run_tool(['tools/deploy.py', config, ckpt, '--out', out])
    text = proc.stdout
    assert 'check: PASSED' in text
    # the exact inference arithmetic: every pixel, every logit bit
    assert 'pixel argmax agreement: 100.000%' in text
    assert re.search(r'max \|logit difference\| 0(\s|$)', text), text
    miou = re.search(r'mIoU fake-quantized ([\d.]+), packed ([\d.]+)', text)
    assert abs(float(miou.group(1)) - float(miou.group(2))) <= 0.1
    assert re.search(r'packed [\d.]+ ms, FP counterpart [\d.]+ ms', text)
    assert 'packed linears' in text and out.is_file()
    # the 1-bit export deploys too
    proc = run_tool(['tools/deploy.py', config, out])
    assert '(packed export)' in proc.stdout
    assert 'check: PASSED' in proc.stdout


def test_deploy_tool_refuses_to_write_a_model_that_fails_the_check(
        binary_run, run_tool, tmp_path):
    config, ckpt = binary_run
    out = tmp_path / 'packed.pth'
    # an agreement no model can reach stands in for a packed model that
    # does not reproduce the trained one
    proc = run_tool(['tools/deploy.py', config, ckpt, '--out', out,
                     '--min-agreement', '1.5'], check=False)
    assert proc.returncode == 1
    assert re.search(r'check: FAILED: pixel agreement 100\.000% is '
                     r'50\.000 points below --min-agreement 150\.0%',
                     proc.stdout), proc.stdout[-2000:]
    assert f'{out} was not written' in proc.stdout
    assert not out.exists()


def test_test_tool_packed_gives_the_same_metrics(binary_run, run_tool,
                                                 tmp_path):
    config, ckpt = binary_run
    line = re.compile(r'aAcc: ([\d.]+)\s+mIoU: ([\d.]+)\s+mAcc: ([\d.]+)')
    plain = run_tool(['tools/test.py', config, ckpt, '--work-dir',
                      tmp_path / 'plain'])
    packed = run_tool(['tools/test.py', config, ckpt, '--work-dir',
                       tmp_path / 'packed', '--packed'])
    assert 'packed inference:' in packed.stdout
    m0 = [float(v) for v in line.findall(plain.stdout)[-1]]
    m1 = [float(v) for v in line.findall(packed.stdout)[-1]]
    assert m0 == pytest.approx(m1, abs=0.1)


def test_benchmark_packed_prints_breakdown(binary_run, run_tool):
    config, _ = binary_run
    proc = run_tool(['tools/analysis/benchmark.py', config, '--packed',
                     '--shape', '64', '64', '--repeats', '1', '--warmup',
                     '0', '--threads-list', '1', '--no-isolate'])
    text = proc.stdout
    assert 'tiny_binary (packed)' in text and 'fp (preset=fp)' in text
    assert 'per-stage breakdown of tiny_binary (packed)' in text
    rows = re.findall(r'^(backbone\.layers\.\d|decode_head)\s+([\d.]+)\s+'
                      r'([\d.]+)\s+([\d.]+)$', text, re.M)
    packed_rows = rows[:3]
    assert [r[0] for r in packed_rows] == ['backbone.layers.0',
                                           'backbone.layers.1',
                                           'decode_head']
    # binary kernels ran inside every stage of the packed model
    assert all(float(r[2]) > 0 for r in packed_rows)
