"""Mixed precision: a bfloat16 autocast training step on the CPU is finite
for every preset and keeps the {0, a} scale positive; ``--amp`` trains on a
machine without CUDA (bfloat16) and refuses float16 there with a message;
with CUDA, float16."""
import mmseg_didb  # noqa: F401  (first: compat fixes)

import math

import pytest
import torch
from mmengine.logging import MessageHub
from mmengine.optim import AmpOptimWrapper
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS

from conftest import tiny_segmentor, write_binary_config
from mmseg_didb.analysis.benchmark import make_batch
from mmseg_didb.binary import PRESETS, ElasticUnsigned

init_default_scope('mmseg')
torch.set_num_threads(2)


def amp_steps(model, device, dtype, steps=3):
    MessageHub.get_current_instance().update_info('iter', 0)
    wrapper = AmpOptimWrapper(
        optimizer=torch.optim.AdamW(model.parameters(), lr=1e-2),
        dtype=dtype)
    inputs, samples = make_batch(2, (32, 32), 4, device)
    model.train()
    for _ in range(steps):
        with wrapper.optim_context(model):
            losses = model.loss(inputs, samples)
        loss = sum(v for k, v in losses.items() if 'loss' in k)
        assert math.isfinite(float(loss))
        wrapper.update_params(loss)
        for name, p in model.named_parameters():
            assert torch.isfinite(p).all(), name
            if p.grad is not None:
                assert torch.isfinite(p.grad).all(), name
    return wrapper


@pytest.mark.parametrize('preset', sorted(PRESETS))
def test_bf16_autocast_steps_on_cpu_are_finite(preset):
    if torch.cuda.is_available():
        pytest.skip('the CPU path is taken only without a GPU')
    torch.manual_seed(0)
    model = MODELS.build(tiny_segmentor(preset))
    wrapper = amp_steps(model, torch.device('cpu'), 'bfloat16')
    assert wrapper.cast_dtype == torch.bfloat16
    assert not wrapper.loss_scaler.is_enabled()
    alphas = [m.alpha for m in model.modules()
              if isinstance(m, ElasticUnsigned)]
    assert (preset == 'fp') == (not alphas)
    assert all(float(a) > 0 for a in alphas)


def test_fp16_on_cpu_stops_with_a_message():
    if torch.cuda.is_available():
        pytest.skip('needs a machine without GPU')
    with pytest.raises(ValueError, match='bfloat16'):
        AmpOptimWrapper(optimizer=torch.optim.SGD(
            [torch.nn.Parameter(torch.zeros(1))], lr=0.1), dtype='float16')


def test_train_tool_amp_runs_on_cpu(tmp_path, texture_data, run_tool):
    if torch.cuda.is_available():
        pytest.skip('needs a machine without GPU')
    cfg = write_binary_config(tmp_path / 'amp.py', texture_data, iters=2,
                              ckpt_interval=2)
    proc = run_tool(['tools/train.py', cfg, '--work-dir', tmp_path / 'w',
                     '--amp'])
    assert 'AMP autocasts to bfloat16' in proc.stdout
    assert 'Iter(train) [2/2]' in proc.stdout
    assert 'loss: nan' not in proc.stdout


@pytest.mark.parametrize('preset', ['didb', 'bit'])
def test_fp16_autocast_steps_on_cuda_are_finite(preset):
    if not torch.cuda.is_available():
        pytest.skip('needs CUDA')
    torch.manual_seed(0)
    model = MODELS.build(tiny_segmentor(preset)).cuda()
    wrapper = amp_steps(model, torch.device('cuda'), 'float16')
    assert wrapper.cast_dtype == torch.float16
    assert all(float(m.alpha) > 0 for m in model.modules()
               if isinstance(m, ElasticUnsigned))
