"""Tests of BinaryMultiLevelNeck (mmseg MultiLevelNeck with binary units)."""
import pytest
import torch

import mmseg_didb  # noqa: F401  (first: installs the mmcv-lite fixes)
from mmseg.models.necks import MultiLevelNeck
from mmseg.registry import MODELS
from mmseg_didb.binary.layers import BinaryConv2d, BinaryConvUnit
from mmseg_didb.binary.rprelu import RPReLU
from mmseg_didb.binary.switch import binarization
from mmseg_didb.models.necks import BinaryMultiLevelNeck

torch.set_num_threads(1)


def _inputs(channels=16, size=4, n=4, batch=2):
    torch.manual_seed(0)
    return [torch.randn(batch, channels, size, size) for _ in range(n)]


def test_same_outputs_as_mmseg_topology():
    cfg = dict(in_channels=[16] * 4, out_channels=8, scales=[4, 2, 1, 0.5])
    neck = MODELS.build(
        dict(type='BinaryMultiLevelNeck', preset='didb', **cfg))
    fp = MultiLevelNeck(**cfg)
    assert isinstance(neck, MultiLevelNeck)
    neck.init_weights()
    xs = _inputs()
    outs, ref = neck(xs), fp(xs)
    assert [o.shape for o in outs] == [r.shape for r in ref] == [
        (2, 8, 16, 16), (2, 8, 8, 8), (2, 8, 4, 4), (2, 8, 2, 2)]
    units = list(neck.lateral_convs) + list(neck.convs)
    assert len(units) == 8
    for unit in units:
        assert isinstance(unit, BinaryConvUnit)
        assert isinstance(unit.conv, BinaryConv2d)
        assert isinstance(unit.act, RPReLU)
        assert unit.bypass is not None
    assert neck.convs[0].conv.kernel_size == (3, 3)
    assert neck.lateral_convs[0].conv.kernel_size == (1, 1)


def test_weights_and_inputs_are_binary():
    neck = BinaryMultiLevelNeck([16] * 2, 8, scales=[1, 2], preset='react')
    conv = neck.convs[1].conv
    wb = conv.quantized_weight()
    # one magnitude per output channel (a_r * sign)
    mags = wb.abs().flatten(1)
    assert torch.allclose(mags, mags[:, :1].expand_as(mags))
    xb = conv.quantized_input(torch.randn(2, 8, 4, 4))
    assert set(xb.unique().tolist()) <= {-1.0, 1.0}
    # switching binarization off changes the output: the convs were binary
    xs = _inputs(n=2)
    neck.eval()
    with torch.no_grad():
        on = neck(xs)
        with binarization(neck, weights=False, activations=False):
            off = neck(xs)
    assert not torch.allclose(on[0], off[0])


def test_gradients_single_input_and_options():
    neck = BinaryMultiLevelNeck([16], 8, scales=[2, 1, 0.5], preset='didb',
                                norm_cfg=dict(type='BN'))
    outs = neck(_inputs(n=1))  # one input replicated to every scale
    assert [o.shape[-1] for o in outs] == [8, 4, 2]
    sum(o.square().mean() for o in outs).backward()
    for n, p in neck.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n


def test_norm_and_act_cfg_mean_what_they_mean_in_the_heads():
    """One helper builds the units of neck and heads: an activation config
    gives the preset's unit activation, None none; None norm is BN."""
    from mmseg_didb.models.decode_heads import BinaryFCNHead
    head = BinaryFCNHead(in_channels=16, channels=8, num_convs=1,
                         num_classes=3, concat_input=False, preset='didb',
                         act_cfg=None, norm_cfg=None)
    neck = BinaryMultiLevelNeck([16], 8, scales=[1], preset='didb',
                                act_cfg=None)
    for unit in (head.convs[0], neck.convs[0]):
        assert isinstance(unit.act, torch.nn.Identity)
        assert isinstance(unit.norm, torch.nn.BatchNorm2d)
    neck = BinaryMultiLevelNeck([16], 8, scales=[1], preset='didb',
                                act_cfg=dict(type='GELU'))
    assert isinstance(neck.convs[0].act, RPReLU)


@pytest.mark.parametrize('act_cfg', [None, dict(type='ReLU')])
def test_fp_preset_is_exactly_mmseg_neck(act_cfg):
    cfg = dict(in_channels=[16] * 2, out_channels=8, scales=[2, 1],
               act_cfg=act_cfg)
    fp = BinaryMultiLevelNeck(**cfg, preset='fp')
    ref = MultiLevelNeck(**cfg)
    assert not any(isinstance(m, BinaryConvUnit) for m in fp.modules())
    fp.load_state_dict(ref.state_dict(), strict=True)
    xs = _inputs(n=2)
    for a, b in zip(fp(xs), ref(xs)):
        assert torch.equal(a, b)


def test_any_widths_and_bad_args():
    # 12 -> 8 is neither a repeat nor a group average: uneven groups
    neck = BinaryMultiLevelNeck([12, 16], 8, scales=[1, 1], preset='didb')
    assert neck.lateral_convs[0].bypass is not None
    assert neck.lateral_convs[1].bypass is not None
    outs = neck([torch.randn(1, 12, 4, 4), torch.randn(1, 16, 4, 4)])
    assert outs[0].shape == (1, 8, 4, 4)
    with pytest.raises(TypeError, match='in_channels'):
        BinaryMultiLevelNeck(16, 8)
    with pytest.raises(ValueError, match='scales'):
        BinaryMultiLevelNeck([16] * 3, 8, scales=[1, 2])
    with pytest.raises(ValueError):
        BinaryMultiLevelNeck([16], 8, preset='nope')
