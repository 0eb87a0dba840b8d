"""BinaryUPerHead / BinaryFCNHead: mmseg topology with binary conv units."""
import mmseg_didb  # noqa: F401  (first: installs the mmcv-lite shims)
import pytest
import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmengine.model.utils import revert_sync_batchnorm
from mmengine.structures import PixelData
from mmseg.models.decode_heads import FCNHead, UPerHead
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample
from torch import nn

from mmseg_didb.binary import (BinaryConv2d, BinaryConvUnit, BWNWeight,
                               ChannelPReLU, ConvBypass,
                               ElasticSign, ReActWeight, RPReLU, RSign,
                               SignSTE, set_binarization)
from mmseg_didb.models.decode_heads import BinaryFCNHead, BinaryUPerHead

torch.set_num_threads(1)

IN_CHANNELS = [8, 16, 24, 40]
CHANNELS = 16
NUM_CLASSES = 5


def uper_cfg(**kwargs):
    cfg = dict(
        in_channels=IN_CHANNELS,
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=CHANNELS,
        dropout_ratio=0.1,
        num_classes=NUM_CLASSES,
        norm_cfg=dict(type='BN', requires_grad=True),
        align_corners=False,
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0))
    cfg.update(kwargs)
    return cfg


def fcn_cfg(**kwargs):
    cfg = dict(
        in_channels=24,
        in_index=2,
        channels=12,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=NUM_CLASSES,
        norm_cfg=dict(type='BN', requires_grad=True),
        align_corners=False,
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4))
    cfg.update(kwargs)
    return cfg


def features(batch=2, size=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(batch, c, size // s, size // s, generator=g)
        for c, s in zip(IN_CHANNELS, (1, 2, 4, 8))
    ]


def test_uper_head_every_conv_binary_classifier_fp():
    head = MODELS.build(dict(type='BinaryUPerHead', preset='didb',
                             **uper_cfg()))
    assert isinstance(head, UPerHead)
    assert not any(isinstance(m, ConvModule) for m in head.modules())
    units = [m for m in head.modules() if isinstance(m, BinaryConvUnit)]
    # 4 PPM + bottleneck + 3 lateral + 3 FPN + FPN bottleneck
    assert len(units) == head.num_binary_units == 12
    for unit in units:
        assert isinstance(unit.conv.weight_quantizer, ReActWeight)
        assert isinstance(unit.conv.input_quantizer, RSign)
        assert isinstance(unit.act, RPReLU)
        assert isinstance(unit.norm, nn.BatchNorm2d)
        assert unit.bypass is not None
    binary_convs = [m for m in head.modules() if isinstance(m, BinaryConv2d)]
    assert len(binary_convs) == 12
    # the classifier is a plain FP conv
    assert type(head.conv_seg) is nn.Conv2d
    # widths that do not divide each other still get an FP bypass
    for lateral in (head.lateral_convs[2], head.lateral_convs[0]):  # 24, 8
        assert isinstance(lateral.bypass, ConvBypass)
        assert lateral.bypass.channels.out_channels == 16
    out = head(features())
    assert out.shape == (2, NUM_CLASSES, 24, 24)


def test_unit_is_act_norm_binconv_plus_bypass():
    """A swapped conv is RPReLU(BN(conv(sign(x/m+b), a*sign(Wc))) + x)."""
    head = BinaryUPerHead(**uper_cfg()).eval()
    unit = head.fpn_convs[0]  # 3x3, 16 -> 16, padding 1
    mag = unit.conv.input_quantizer.input_scale
    with torch.no_grad():
        mag.magnitude.uniform_(0.5, 4)
        mag.initialized.fill_(1)
        unit.conv.input_quantizer.bias.uniform_(-.3, .3)
        unit.norm.running_mean.uniform_(-1, 1)
        unit.norm.running_var.uniform_(.5, 2)
        unit.act.gamma.uniform_(-.2, .2)
        unit.act.zeta.uniform_(-.2, .2)
    x = torch.randn(2, CHANNELS, 7, 7)
    w = unit.conv.weight
    wc = w - w.mean(dim=(1, 2, 3), keepdim=True)
    scale = w.abs().mean(dim=(1, 2, 3), keepdim=True)
    wb = scale * torch.where(wc >= 0, 1., -1.)
    b = unit.conv.input_quantizer.bias.view(1, -1, 1, 1)
    m = mag.magnitude.view(1, -1, 1, 1)
    xb = torch.where(x / m + b >= 0, 1., -1.)
    y = F.conv2d(xb, wb, padding=1)
    y = unit.norm(y) + x  # bypass: identity at equal widths
    g = unit.act.gamma.view(1, -1, 1, 1)
    z = unit.act.zeta.view(1, -1, 1, 1)
    s = unit.act.slope.view(1, -1, 1, 1)
    ref = torch.where(y - g >= 0, y - g, s * (y - g)) + z
    torch.testing.assert_close(unit(x), ref)


def test_fp_preset_is_exactly_mmseg_head():
    torch.manual_seed(0)
    ref = UPerHead(**uper_cfg()).eval()
    head = BinaryUPerHead(preset='fp', **uper_cfg()).eval()
    assert head.num_binary_units == 0
    assert ref.state_dict().keys() == head.state_dict().keys()
    head.load_state_dict(ref.state_dict())
    x = features()
    torch.testing.assert_close(head(x), ref(x))

    ref_aux = FCNHead(**fcn_cfg()).eval()
    aux = BinaryFCNHead(preset='fp', **fcn_cfg()).eval()
    aux.load_state_dict(ref_aux.state_dict())
    torch.testing.assert_close(aux(x), ref_aux(x))


def test_fcn_head_in_index_concat_and_units():
    head = BinaryFCNHead(**fcn_cfg(num_convs=2, concat_input=True)).eval()
    assert isinstance(head, FCNHead)
    units = [m for m in head.modules() if isinstance(m, BinaryConvUnit)]
    assert len(units) == 3  # two convs + conv_cat
    assert isinstance(head.conv_cat, BinaryConvUnit)
    assert head.conv_cat.conv.in_channels == 24 + 12
    x = features()
    out = head(x)
    assert out.shape == (2, NUM_CLASSES, 6, 6)
    # in_index=2: the other levels do not matter
    y = [torch.randn_like(t) if i != 2 else t for i, t in enumerate(x)]
    torch.testing.assert_close(head(y), out)


def test_presets_and_overrides_reach_the_units():
    bnn = BinaryUPerHead(preset='bnn', **uper_cfg())
    unit = bnn.bottleneck
    assert isinstance(unit.conv.input_quantizer, SignSTE)
    assert isinstance(unit.act, ChannelPReLU) and not isinstance(
        unit.act, RPReLU)
    bit = BinaryFCNHead(preset='bit', **fcn_cfg())
    assert isinstance(bit.convs[0].conv.weight_quantizer, BWNWeight)
    assert isinstance(bit.convs[0].conv.input_quantizer, ElasticSign)
    over = BinaryUPerHead(
        preset='didb', preset_overrides=dict(act='ste'), **uper_cfg())
    assert isinstance(over.bottleneck.conv.input_quantizer, SignSTE)
    assert over.preset.weight == 'react'
    with pytest.raises(ValueError, match='valid presets'):
        BinaryUPerHead(preset='nope', **uper_cfg())


def test_norm_act_and_align_corners_follow_mmseg_args():
    head = BinaryUPerHead(
        **uper_cfg(
            norm_cfg=dict(type='SyncBN', requires_grad=True),
            act_cfg=None,
            align_corners=True))
    units = [m for m in head.modules() if isinstance(m, BinaryConvUnit)]
    assert all(isinstance(u.norm, nn.SyncBatchNorm) for u in units)
    assert all(isinstance(u.act, nn.Identity) for u in units)
    assert head.psp_modules.align_corners is True
    # what mmengine's runner does on a single device
    head = revert_sync_batchnorm(head)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in head.modules())
    x = features()
    out = head(x)
    # align_corners is used by the top-down path: flipping it changes output
    head.align_corners = False
    head.psp_modules.align_corners = False
    assert not torch.allclose(head(x), out)


def test_loss_and_gradients_reach_binary_parameters():
    # a list of mmseg losses, as in mmseg configs
    head = BinaryUPerHead(**uper_cfg(loss_decode=[
        dict(type='CrossEntropyLoss', loss_weight=1.0),
        dict(type='DiceLoss', loss_weight=0.5, loss_name='loss_dice')
    ]))
    x = features()
    samples = []
    for _ in range(2):
        s = SegDataSample()
        label = torch.randint(0, NUM_CLASSES, (1, 24, 24))
        label[0, :2] = 255  # ignored pixels
        s.gt_sem_seg = PixelData(data=label)
        s.set_metainfo(dict(img_shape=(24, 24), pad_shape=(24, 24)))
        samples.append(s)
    losses = head.loss(x, samples, train_cfg=dict())
    assert set(losses) >= {'loss_ce', 'loss_dice', 'acc_seg'}
    assert torch.isfinite(losses['loss_ce'] + losses['loss_dice'])
    (losses['loss_ce'] + losses['loss_dice']).backward()
    unit = head.lateral_convs[1]
    for p in (unit.conv.weight, unit.conv.input_quantizer.bias,
              unit.act.gamma, unit.norm.weight, head.conv_seg.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_binarization_switch_reaches_head_quantizers():
    head = BinaryUPerHead(**uper_cfg()).eval()
    x = features()
    binary = head(x)
    set_binarization(head, weights=False, activations=False)
    assert not torch.allclose(head(x), binary)
    set_binarization(head, weights=True, activations=True)
    torch.testing.assert_close(head(x), binary)
