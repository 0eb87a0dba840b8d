"""convert_to_packed: whole segmentors on bit-packed kernels predict what the
fake-quantized models predict."""
import mmseg_didb  # noqa: F401  (first: installs the mmcv-lite shims)

import pytest
import torch
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS

from mmseg_didb.binary import PRESETS
from mmseg_didb.binary.rprelu import TokenRPReLU
from mmseg_didb.deploy import (PackedBinaryConv2d, PackedBinaryLinear,
                               convert_to_packed)

torch.set_num_threads(2)
init_default_scope('mmseg')
SIZE = 64
BINARY_PRESETS = sorted(p for p in PRESETS if p != 'fp')


def head(preset, in_channels, in_index):
    return dict(type='BinaryUPerHead', preset=preset, in_channels=in_channels,
                in_index=in_index, pool_scales=(1, 2, 3), channels=32,
                num_classes=5, norm_cfg=dict(type='BN', requires_grad=True),
                align_corners=False,
                loss_decode=dict(type='CrossEntropyLoss'))


def swin_segmentor(preset):
    return dict(
        type='BinaryEncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor',
                               size=(SIZE, SIZE)),
        backbone=dict(type='DIDBSwin', preset=preset, embed_dims=16,
                      depths=(2, 2, 1), num_heads=(1, 2, 4), window_size=4,
                      out_indices=(0, 1, 2), pretrain_img_size=SIZE,
                      drop_path_rate=0.),
        decode_head=head(preset, [16, 32, 64], [0, 1, 2]),
        test_cfg=dict(mode='whole'))


def vit_segmentor(preset):
    return dict(
        type='BinaryEncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor',
                               size=(SIZE, SIZE)),
        backbone=dict(type='DIDBViT', preset=preset, embed_dims=32,
                      num_layers=2, num_heads=2, mlp_ratio=2, img_size=SIZE,
                      patch_size=8, out_indices=(0, 1)),
        neck=dict(type='BinaryMultiLevelNeck', preset=preset,
                  in_channels=[32, 32], out_channels=32, scales=[2, 1]),
        decode_head=head(preset, [32, 32], [0, 1]),
        test_cfg=dict(mode='whole'))


def trained_looking(cfg, seed=0):
    """Random weights, non-trivial shifts, token maps and BN statistics (a
    few training-mode forwards initialise the running magnitudes and BiT
    scales and move the BN statistics)."""
    torch.manual_seed(seed)
    model = MODELS.build(cfg)
    model.init_weights()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith('quantizer.bias') or name.endswith('_quant.bias'):
                p.uniform_(-0.3, 0.3)
        for m in model.modules():
            if isinstance(m, TokenRPReLU) and m.mode == 'static':
                m.token_gamma.normal_(0, 0.1)
                m.token_zeta.normal_(0, 0.1)
        model.train()
        for _ in range(3):
            model._forward(torch.randn(2, 3, SIZE, SIZE))
    return model.eval()


def compare(model, size=SIZE):
    torch.manual_seed(1)
    x = torch.randn(2, 3, size, size)
    packed = convert_to_packed(model)
    with torch.no_grad():
        want = model._forward(x)
        got = packed._forward(x)
    return packed, got, want


@pytest.mark.parametrize('builder', [swin_segmentor, vit_segmentor],
                         ids=['swin', 'vit'])
def test_packed_segmentor_gives_the_same_logits(builder):
    model = trained_looking(builder('didb'))
    packed, got, want = compare(model)
    report = packed.pack_report
    # every binary linear, conv and attention matmul was replaced
    assert report.linears and report.convs and report.attentions
    assert not report.kept_fp
    assert len(report.folded_norms) == len(report.convs)
    assert not any(type(m).__name__ in ('BinaryLinear', 'BinaryConv2d')
                   for m in packed.modules())
    assert any(isinstance(m, PackedBinaryLinear) for m in packed.modules())
    assert any(isinstance(m, PackedBinaryConv2d) for m in packed.modules())
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
    assert torch.equal(got.argmax(1), want.argmax(1))
    # the original model is untouched (a copy was converted)
    assert any(type(m).__name__ == 'BinaryLinear' for m in model.modules())
    # other input sizes (window padding, odd token grids) work too
    _, got, want = compare(model, size=48)
    assert torch.equal(got.argmax(1), want.argmax(1))


@pytest.mark.parametrize('preset', BINARY_PRESETS)
def test_every_preset_converts(preset):
    model = trained_looking(swin_segmentor(preset), seed=1)
    packed, got, want = compare(model)
    assert packed.pack_report.linears and packed.pack_report.attentions
    agree = (got.argmax(1) == want.argmax(1)).float().mean().item()
    assert agree >= 0.999
    torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)


def test_model_without_binary_layers_converts_to_itself():
    model = trained_looking(swin_segmentor('fp'))
    packed, got, want = compare(model)
    report = packed.pack_report
    assert not (report.linears or report.convs or report.attentions)
    assert torch.equal(got, want)
    assert [type(m) for m in packed.modules()] == [
        type(m) for m in model.modules()]


def test_switched_off_binarization_stays_fp():
    # stage 1 of two-stage training: binary activations, FP weights
    cfg = dict(swin_segmentor('react'), binarize=dict(weights=False))
    model = trained_looking(cfg)
    packed, got, want = compare(model)
    report = packed.pack_report
    assert not report.linears and not report.convs
    assert report.kept_fp and report.attentions  # Q K^T, Ab V still binary
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
