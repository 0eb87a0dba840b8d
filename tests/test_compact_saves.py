"""Compact autograd saves: the binary layers keep their binary operands as
sign bits, the binarizers keep boolean masks; every gradient is bit for bit
what the plain fake-quantized path gives, for every preset; activation
checkpointing gives the same gradients too."""
import mmseg_didb  # noqa: F401  (first: compat fixes)

import pytest
import torch
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS

from conftest import tiny_segmentor
from mmseg_didb.analysis.benchmark import make_batch
from mmseg_didb.binary import (PRESETS, BinaryConv2d, BinaryLinear,
                               ElasticSign, SignSTE, SignWeight,
                               compact_saves)
from mmseg_didb.binary import compact

init_default_scope('mmseg')


def gradients(model, inputs, samples, compact_on=True):
    # training forwards update state (running magnitudes, BN statistics,
    # lazily initialised scales): every call starts from the same state
    if not hasattr(model, '_start_state'):
        model._start_state = {k: v.clone()
                              for k, v in model.state_dict().items()}
    model.load_state_dict(model._start_state)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(0)  # dropout / drop-path draws
    with compact_saves(compact_on):
        losses = model.loss(inputs, samples)
        sum(v for k, v in losses.items() if 'loss' in k).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()
            if p.grad is not None}


def assert_same(a, b):
    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize('backbone', ['swin', 'vit'])
@pytest.mark.parametrize('preset', sorted(PRESETS))
def test_gradients_unchanged_for_every_preset(preset, backbone):
    torch.manual_seed(0)
    model = MODELS.build(tiny_segmentor(preset, backbone=backbone)).train()
    inputs, samples = make_batch(2, (32, 32), 4, torch.device('cpu'))
    assert_same(gradients(model, inputs, samples, False),
                gradients(model, inputs, samples, True))


@pytest.mark.parametrize('weight', ['sign', 'react', 'bwn', 'pws'])
@pytest.mark.parametrize('act', ['ste', 'approx', 'rsign', 'elastic', 'asm'])
@pytest.mark.parametrize('layer', ['linear', 'square', 'conv'])
def test_layer_gradients_unchanged(weight, act, layer):
    torch.manual_seed(0)
    if layer != 'conv':
        width = 24 if layer == 'square' else 16
        m = BinaryLinear(24, width, weight_quantizer=weight,
                         input_quantizer=act)
        x = torch.randn(2, 5, 24)
    else:
        m = BinaryConv2d(12, 8, 3, stride=2, padding=1,
                         weight_quantizer=weight, input_quantizer=act)
        m.input_quantizer.channel_dim = 1
        x = torch.randn(2, 12, 7, 9)
    grads = []
    for on in (False, True):
        m.zero_grad()
        xx = x.clone().requires_grad_()
        with compact_saves(on):
            y = m(xx)
            (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        grads.append([xx.grad] + [p.grad for p in m.parameters()])
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_binary_operands_are_saved_as_bits(monkeypatch):
    packed = []
    original = compact._SignSaves.pack

    def spy(self, t):
        out = original(self, t)
        packed.append(out)
        return out

    monkeypatch.setattr(compact._SignSaves, 'pack', spy)
    m = BinaryLinear(32, 8, preset='react')
    x = torch.randn(4, 10, 32, requires_grad=True)
    y = m(x)
    bits = [p for p in packed if isinstance(p, tuple)]
    # the binarized input (40 x 32) and the binarized weight (8 x 32)
    assert sorted(p[0].numel() for p in bits) == [8 * 32, 40 * 32]
    assert all(p[0].dtype == torch.bool for p in bits)
    y.sum().backward()
    # nothing is packed when the quantizers are off (an FP layer) or when
    # compact saves are switched off
    packed.clear()
    with compact_saves(False):
        m(x)
    BinaryLinear(32, 8)(x)
    assert not any(isinstance(p, tuple) for p in packed)


def saved(fn):
    """(dtype, numel) of every tensor autograd saves while ``fn`` runs."""
    seen = []

    def pack(t):
        seen.append((t.dtype, t.numel()))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return seen


def test_binarizers_keep_masks_not_floats():
    x = torch.randn(64, requires_grad=True)
    w = torch.randn(8, 64, requires_grad=True)
    assert saved(lambda: SignSTE()(x)) == [(torch.bool, 64)]
    assert saved(lambda: SignWeight()(w)) == [(torch.bool, 512)]
    # BiT's elastic sign: the window and the sign as masks (and alpha)
    out = saved(lambda: ElasticSign(64)(x))
    assert [d for d, n in out if n == 64] == [torch.bool, torch.bool]
    assert all(n == 1 for d, n in out if d != torch.bool)


@pytest.mark.parametrize('backbone', ['swin', 'vit'])
def test_with_cp_gives_the_same_gradients(backbone):
    torch.manual_seed(0)
    cfg = tiny_segmentor('didb', backbone=backbone)
    plain = MODELS.build(cfg).train()
    cfg['backbone']['with_cp'] = True
    cfg['decode_head']['with_cp'] = True
    if 'neck' in cfg:
        cfg['neck']['with_cp'] = True
    ckpt = MODELS.build(cfg).train()
    ckpt.load_state_dict(plain.state_dict())
    ckpt._start_state = {k: v.clone() for k, v in plain.state_dict().items()}
    inputs, samples = make_batch(2, (32, 32), 4, torch.device('cpu'))
    a = gradients(plain, inputs, samples)
    b = gradients(ckpt, inputs, samples)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0,
                                   msg=name)


def test_compact_saves_step_aside_under_torch_compile(monkeypatch):
    """The compiled graph chooses its own saved tensors: no Python
    saved-tensor hooks (they made dynamo recompile on every storage)."""
    t = torch.ones(3, 4).requires_grad_()
    level = torch.ones(())
    hooks = compact.binary_operands([(t, level)])
    assert isinstance(hooks, torch.autograd.graph.saved_tensors_hooks)
    monkeypatch.setattr(torch.compiler, 'is_compiling', lambda: True)
    assert not isinstance(compact.binary_operands([(t, level)]),
                          torch.autograd.graph.saved_tensors_hooks)


def _spy_ternary(monkeypatch):
    packed = []
    original = compact._TernarySaves.pack

    def spy(t):
        out = original(t)
        packed.append(out)
        return out

    monkeypatch.setattr(compact._TernarySaves, 'pack', staticmethod(spy))
    return packed


def test_ternary_saves_rebuild_padded_and_transposed_operands(monkeypatch):
    packed = _spy_ternary(monkeypatch)
    torch.manual_seed(0)
    # +-scale queries and +-1 keys with zero-padded rows, keys transposed
    q = torch.sign(torch.randn(3, 2, 6, 4)) * 0.5
    k = torch.sign(torch.randn(3, 2, 6, 4))
    q[:, :, 4:] = 0
    k[:, :, 4:] = 0
    grads = []
    for on in (False, True):
        qq, kk = q.clone().requires_grad_(), k.clone().requires_grad_()
        with compact.ternary_saves(on):
            s = qq @ kk.transpose(-2, -1)
        (s * torch.linspace(-1, 1, s.numel()).view_as(s)).sum().backward()
        grads.append((s, qq.grad, kk.grad))
    for a, b in zip(*grads):
        assert torch.equal(a, b)
    bits = [p for p in packed if isinstance(p, tuple)]
    assert len(bits) == 2 and all(p[0].dtype == torch.int8 for p in bits)
    assert sorted(float(p[1]) for p in bits) == [0.5, 1.0]
    # off when asked, when compact saves are off, and without autograd
    packed.clear()
    x = q.clone().requires_grad_()
    with compact.ternary_saves(False):
        x @ k.transpose(-2, -1)
    with compact_saves(False), compact.ternary_saves(True):
        x @ k.transpose(-2, -1)
    with torch.no_grad(), compact.ternary_saves(True):
        x @ k.transpose(-2, -1)
    assert not packed


@pytest.mark.parametrize('preset', ['didb', 'react', 'fp'])
def test_attention_matmuls_save_int8_operands_when_binary(monkeypatch,
                                                          preset):
    from mmseg_didb.models.layers.didb_attention import DIDBAttention
    packed = _spy_ternary(monkeypatch)
    torch.manual_seed(0)
    attn = DIDBAttention(16, 2, PRESETS[preset], grid=(6, 6)).train()
    x = torch.randn(2, 36, 16)
    weight = torch.linspace(-1, 1, x.numel()).view_as(x)
    start = {k: v.clone() for k, v in attn.state_dict().items()}
    grads = []
    for on in (True, False):
        attn.load_state_dict(start)
        attn.zero_grad()
        xx = x.clone().requires_grad_()
        with compact_saves(on):
            # 4x4 windows on the 6x6 map: zero-padded to 8x8
            (attn(xx, (6, 6), window_size=4) * weight).sum().backward()
        grads.append([xx.grad] + [p.grad for p in attn.parameters()])
    for a, b in zip(*grads):
        assert torch.equal(a, b)
    bits = [p for p in packed if isinstance(p, tuple)]
    # Q K^T per HFSC branch (two for didb) and Ab V, two operands each
    expected = {'didb': 6, 'react': 4, 'fp': 0}[preset]
    assert len(bits) == expected
    assert all(p[0].dtype == torch.int8 for p in bits)
