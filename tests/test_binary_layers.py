"""Binary layers and units: value sets, straight-through gradients, exact FP
equivalence with binarization off, shortcuts and the mmcv registration."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmseg_didb.binary import (BinaryConv2d, BinaryConvUnit, BinaryLinear, TokenGrid,
                               BinaryLinearUnit, BWNWeight, ChannelPReLU,
                               ChannelShortcut, ElasticSign, PWSWeight,
                               ReActWeight, RPReLU, RSign, SignWeight,
                               TokenRPReLU, binarization, set_binarization,
                               sign)


def _is_integer(t: torch.Tensor, tol: float = 1e-4) -> bool:
    return bool(((t - t.round()).abs() < tol).all())


def test_binary_linear_outputs_in_expected_value_set():
    torch.manual_seed(0)
    layer = BinaryLinear(7, 5, bias=False, weight_quantizer=ReActWeight(),
                         input_quantizer=RSign(7))
    y = layer(torch.randn(3, 4, 7))
    a = layer.weight.abs().mean(dim=1)  # a_r per output row
    counts = y / a  # dot products of +-1 vectors of length 7
    assert _is_integer(counts)
    assert counts.abs().max() <= 7
    assert bool(((counts.round() % 2) == 1).all())  # odd length -> odd sums


def test_binary_linear_bit_value_set():
    torch.manual_seed(0)
    layer = BinaryLinear(6, 4, bias=False, weight_quantizer=BWNWeight(),
                         input_quantizer=ElasticSign(6))
    y = layer(torch.randn(2, 3, 6))
    unit = layer.input_quantizer.alpha * layer.weight.abs().mean()
    counts = y / unit
    assert _is_integer(counts, 1e-3) and counts.abs().max() <= 6
    assert bool(((counts.round() % 2) == 0).all())


def test_binary_linear_straight_through_gradients():
    torch.manual_seed(0)
    layer = BinaryLinear(6, 4, weight_quantizer=ReActWeight(),
                         input_quantizer=RSign(6))
    with torch.no_grad():
        layer.weight.mul_(4)  # some |Wc| > 1 so the clip matters
        layer.input_quantizer.bias.uniform_(-0.3, 0.3)
    x = torch.randn(5, 6, requires_grad=True)
    g = torch.randn(5, 4)
    layer(x).backward(g)
    w = layer.weight.detach()
    xb = sign(x.detach() + layer.input_quantizer.bias.detach())
    wc = w - w.mean(1, keepdim=True)
    wb = w.abs().mean(1, keepdim=True) * sign(wc)
    # weight: m = (g^T xb) * 1[|Wc| <= 1]; grad = m - rowmean(m)
    m = (g.t() @ xb) * (wc.abs() <= 1)
    torch.testing.assert_close(layer.weight.grad, m - m.mean(1, keepdim=True))
    # input: (g Wb) * ApproxSign'(x + b)
    xs = x.detach() + layer.input_quantizer.bias.detach()
    expected_gx = (g @ wb) * (2 - 2 * xs.abs()).clamp_min(0)
    torch.testing.assert_close(x.grad, expected_gx)
    torch.testing.assert_close(layer.bias.grad, g.sum(0))


def test_binary_conv_straight_through_weight_gradient():
    torch.manual_seed(0)
    conv = BinaryConv2d(3, 4, 3, padding=1, bias=False,
                        weight_quantizer=SignWeight(),
                        input_quantizer=RSign(3, channel_dim=1))
    with torch.no_grad():
        conv.weight.mul_(8)
    x = torch.randn(2, 3, 6, 6)
    g = torch.randn(2, 4, 6, 6)
    conv(x).backward(g)
    xb = sign(x)
    wb = (conv.weight.detach().abs().mean((1, 2, 3), keepdim=True) *
          sign(conv.weight.detach())).requires_grad_(True)
    F.conv2d(xb, wb, padding=1).backward(g)
    mask = (conv.weight.detach().abs() <= 1)
    assert 0 < mask.float().mean() < 1
    torch.testing.assert_close(conv.weight.grad, wb.grad * mask)


@pytest.mark.parametrize('use_switch', [True, False])
def test_binary_linear_equals_linear_when_off(use_switch):
    torch.manual_seed(0)
    ref = nn.Linear(8, 5)
    layer = BinaryLinear(8, 5, weight_quantizer=ReActWeight(),
                         input_quantizer=ElasticSign(8))
    layer.load_state_dict(ref.state_dict(), strict=False)
    if use_switch:
        set_binarization(layer, weights=False, activations=False)
    else:
        layer = BinaryLinear(8, 5)
        layer.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(layer(x), ref(x), atol=1e-6, rtol=0)
    assert isinstance(layer, nn.Linear)


def test_binary_conv_equals_conv_when_off():
    torch.manual_seed(0)
    ref = nn.Conv2d(4, 6, 3, stride=2, padding=1, dilation=1, groups=2)
    conv = BinaryConv2d(4, 6, 3, stride=2, padding=1, groups=2,
                        weight_quantizer='react', input_quantizer='rsign')
    conv.load_state_dict(ref.state_dict(), strict=False)
    x = torch.randn(2, 4, 9, 7)
    assert not torch.allclose(conv(x), ref(x))
    with binarization(conv, weights=False, activations=False):
        torch.testing.assert_close(conv(x), ref(x), atol=1e-6, rtol=0)
    assert conv.weight_quantizer.enabled and conv.input_quantizer.enabled


def test_quantizer_arguments_checked():
    with pytest.raises(TypeError, match='weight'):
        BinaryLinear(4, 4, weight_quantizer=RSign(4))
    with pytest.raises(TypeError, match='activation'):
        BinaryConv2d(4, 4, 1, input_quantizer=ReActWeight())
    with pytest.raises(ValueError, match='valid'):
        BinaryLinear(4, 4, weight_quantizer='reactt')
    layer = BinaryLinear(4, 6, preset='bnn')
    assert type(layer.weight_quantizer).__name__ == 'SignWeight'
    assert type(layer.input_quantizer).__name__ == 'SignSTE'


def test_pws_alpha_created_by_layer():
    layer = BinaryLinear(5, 3, weight_quantizer=PWSWeight())
    names = [n for n, _ in layer.named_parameters()]
    assert 'weight_quantizer.alpha' in names
    assert layer.weight_quantizer.alpha.shape == (3, )
    y = layer(torch.randn(2, 5))
    torch.testing.assert_close(layer.weight_quantizer.alpha.detach(),
                               layer.weight.detach().abs().mean(1))
    assert y.shape == (2, 3)


def test_channel_shortcut_modes():
    x = torch.arange(6.0).reshape(1, 1, 6)
    assert ChannelShortcut(6, 6)(x) is x
    rep = ChannelShortcut(6, 12)(x)
    assert rep.tolist() == [[list(range(6)) * 2]]
    avg = ChannelShortcut(6, 3)(x)
    assert avg.tolist() == [[[1.5, 2.5, 3.5]]]  # mean of j and j + 3
    torch.testing.assert_close(ChannelShortcut(12, 6)(rep), x)
    xm = torch.randn(2, 4, 3, 3)
    out = ChannelShortcut(4, 2, channel_dim=1)(xm)
    torch.testing.assert_close(out, (xm[:, :2] + xm[:, 2:]) / 2)
    with pytest.raises(ValueError, match='positive'):
        ChannelShortcut(0, 5)
    xd = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ChannelShortcut(4, 2), (xd, ))


def test_channel_shortcut_widths_that_do_not_divide():
    # widening 3 -> 5 tiles and cuts: channels 0 1 2 0 1
    y = torch.arange(3.).view(1, 3, 1, 1)
    assert ChannelShortcut(3, 5, 1)(y).flatten().tolist() == [0, 1, 2, 0, 1]
    # narrowing 5 -> 2 averages {0, 2, 4} and {1, 3}
    z = torch.tensor([1., 2., 3., 4., 5.])
    assert ChannelShortcut(5, 2)(z).tolist() == [3., 3.]
    assert ChannelShortcut(5, 2, 1)(z.view(1, 5, 1, 1)).flatten().tolist() \
        == [3., 3.]
    # general case on tokens and maps agrees with an explicit cyclic map
    x = torch.randn(2, 4, 7)
    torch.testing.assert_close(ChannelShortcut(7, 10)(x),
                               x[..., torch.arange(10) % 7])
    groups = torch.arange(7) % 3
    ref = torch.stack([x[..., groups == j].mean(-1) for j in range(3)], -1)
    torch.testing.assert_close(ChannelShortcut(7, 3)(x), ref)
    xm = x.transpose(1, 2).reshape(2, 7, 2, 2)
    torch.testing.assert_close(
        ChannelShortcut(7, 3, channel_dim=1)(xm),
        ref.transpose(1, 2).reshape(2, 3, 2, 2))
    # nothing in the state dict, buffers follow .to()
    sc = ChannelShortcut(7, 3).double()
    assert not sc.state_dict() and sc.count.dtype == torch.float64
    with pytest.raises(ValueError, match='expects 5'):
        ChannelShortcut(5, 2, 1)(y)
    xd = torch.randn(2, 7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ChannelShortcut(7, 3), (xd, ))
    assert torch.autograd.gradcheck(ChannelShortcut(3, 5), (xd[:, :3], ))


def test_fp_unit_is_plain_linear():
    unit = BinaryLinearUnit(8, 16, 'fp')
    assert unit.norm is None and unit.shortcut is None and unit.act is None
    assert set(unit.state_dict()) == {'linear.weight', 'linear.bias'}
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(unit(x), F.linear(x, unit.linear.weight,
                                                 unit.linear.bias))


def test_binary_unit_composition_and_fp_switch():
    torch.manual_seed(0)
    unit = BinaryLinearUnit(8, 16, 'react')
    assert isinstance(unit.norm, nn.LayerNorm)
    assert isinstance(unit.act, RPReLU)
    assert unit.shortcut.mode == 'repeat'
    x = torch.randn(2, 5, 8)
    y = unit(x)
    lin = unit.linear
    xb = sign(x + lin.input_quantizer.bias)
    wb = ReActWeight()(lin.weight)
    expected = unit.act(unit.norm(F.linear(xb, wb, lin.bias)) + x.repeat(
        1, 1, 2))
    torch.testing.assert_close(y, expected)
    with binarization(unit, weights=False, activations=False):
        expected_fp = unit.act(
            unit.norm(F.linear(x, lin.weight, lin.bias)) + x.repeat(1, 1, 2))
        torch.testing.assert_close(unit(x), expected_fp, atol=1e-6, rtol=0)


def test_unit_token_rprelu_and_options():
    unit = BinaryLinearUnit(8, 8, 'didb', grid=TokenGrid((2, 3), 1))
    assert isinstance(unit.act, TokenRPReLU)
    x = torch.randn(2, 1 + 4 * 5, 8)
    assert unit(x, hw=(4, 5)).shape == x.shape
    with pytest.raises(ValueError, match='hw'):
        unit(x)
    bnn = BinaryLinearUnit(8, 4, 'bnn', shortcut=False, activation=False)
    assert bnn.shortcut is None and isinstance(bnn.act, nn.Identity)
    prelu = BinaryLinearUnit(8, 4, 'bnn')
    assert type(prelu.act) is ChannelPReLU
    bn = BinaryLinearUnit(8, 4, dict(name='react', norm='bn'))
    assert isinstance(bn.norm.bn, nn.BatchNorm1d)
    bn.train()
    y = bn(torch.randn(3, 7, 8))
    assert y.shape == (3, 7, 4)
    # BatchNorm statistics per channel over batch and tokens
    z = bn.linear(torch.randn(3, 7, 8))
    zn = bn.norm(z)
    torch.testing.assert_close(zn.mean((0, 1)), torch.zeros(4), atol=1e-5,
                               rtol=0)
    synced = nn.SyncBatchNorm.convert_sync_batchnorm(bn)
    assert isinstance(synced.norm.bn, nn.SyncBatchNorm)


def test_binary_conv_unit_bypass_and_values():
    torch.manual_seed(0)
    unit = BinaryConvUnit(4, 8, 3, 'react', stride=2, padding=1)
    assert isinstance(unit.norm, nn.BatchNorm2d)
    assert isinstance(unit.act, RPReLU) and unit.act.channel_dim == 1
    x = torch.randn(2, 4, 7, 9)
    unit.eval()
    y = unit(x)
    assert y.shape == (2, 8, 4, 5)
    pooled = F.avg_pool2d(x, 2, 2, ceil_mode=True, count_include_pad=False)
    conv_out = unit.norm(unit.conv(x))
    torch.testing.assert_close(y, unit.act(conv_out + pooled.repeat(1, 2, 1,
                                                                    1)))
    narrow = BinaryConvUnit(8, 4, 1, 'react', act=nn.Identity())
    xn = torch.randn(1, 8, 5, 5)
    narrow.eval()
    torch.testing.assert_close(
        narrow(xn), narrow.norm(narrow.conv(xn)) +
        (xn[:, :4] + xn[:, 4:]) / 2)
    with pytest.raises(ValueError, match='padding'):
        BinaryConvUnit(4, 4, 3, 'react')(torch.randn(1, 4, 6, 6))
    fp = BinaryConvUnit(4, 8, 3, 'fp', padding=1)
    assert fp.bypass is None and isinstance(fp.act, nn.ReLU)
    assert fp.conv.weight_quantizer is None


def test_autocast_cpu_bfloat16():
    torch.manual_seed(0)
    layer = BinaryLinear(8, 4, weight_quantizer=ReActWeight(),
                         input_quantizer=RSign(8))
    x = torch.randn(2, 8, requires_grad=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    ref = F.linear(sign(x.detach()), ReActWeight()(layer.weight.detach()),
                   layer.bias.detach())
    torch.testing.assert_close(y.float(), ref, atol=5e-2, rtol=2e-2)
    y.float().sum().backward()
    assert layer.weight.grad.dtype == torch.float32
    assert layer.input_quantizer.bias.grad.dtype == torch.float32


def test_conv_module_builds_binary_conv_from_registry():
    pytest.importorskip('mmcv')
    import mmseg_didb  # noqa: F401  registers BinaryConv2d
    from mmcv.cnn import ConvModule
    from mmengine.registry import MODELS
    assert MODELS.get('BinaryConv2d') is BinaryConv2d
    m = ConvModule(4, 8, 3, padding=1,
                   conv_cfg=dict(type='BinaryConv2d', preset='react'),
                   norm_cfg=dict(type='BN'))
    assert isinstance(m.conv, BinaryConv2d)
    assert isinstance(m.conv.weight_quantizer, ReActWeight)
    assert m(torch.randn(1, 4, 6, 6)).shape == (1, 8, 6, 6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_units_on_cuda_with_autocast():
    torch.manual_seed(0)
    unit = BinaryLinearUnit(16, 32, 'didb', grid=(4, 4)).cuda()
    conv = BinaryConvUnit(16, 16, 3, 'bit', padding=1).cuda()
    x = torch.randn(2, 16, 16, device='cuda', requires_grad=True)
    xm = torch.randn(2, 16, 8, 8, device='cuda', requires_grad=True)
    with torch.autocast('cuda', dtype=torch.float16):
        y = unit(x, hw=(4, 4))
        z = conv(xm)
    assert torch.isfinite(y).all() and torch.isfinite(z).all()
    (y.float().sum() + z.float().sum()).backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(xm.grad).all()
    unit_cpu = BinaryLinearUnit(16, 32, 'didb', grid=(4, 4))
    unit_cpu.load_state_dict(unit.state_dict())
    torch.testing.assert_close(unit(x, hw=(4, 4)).cpu(),
                               unit_cpu(x.detach().cpu(), hw=(4, 4)),
                               atol=1e-4, rtol=1e-4)
