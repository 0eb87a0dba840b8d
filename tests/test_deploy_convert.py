"""convert_to_packed: whole segmentors on bit-packed kernels compute the
fake-quantized models' logits bit for bit, for every preset and DIDB
switch, at sizes that are not multiples of the window or the patch, and for
the full ADE20K configs at 512x512."""
import mmseg_didb  # noqa: F401  (first: installs the mmcv-lite shims)

import pytest
import torch
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS

from mmengine.config import Config

from conftest import REPO_ROOT
from kernel_variants import VARIANTS, variant
from mmseg_didb.binary import PRESETS, exact_arithmetic
from mmseg_didb.binary.rprelu import TokenRPReLU
from mmseg_didb.deploy import (PackedBinaryConv2d, PackedBinaryLinear,
                               convert_to_packed, kernels_available)
from mmseg_didb.deploy.attention import PackedAttention

torch.set_num_threads(2)
init_default_scope('mmseg')
SIZE = 64
BINARY_PRESETS = sorted(p for p in PRESETS if p != 'fp')


#: odd sizes: not multiples of the window or the patch, padded windows
SIZES = [(64, 64), (97, 131)]


def head(preset, in_channels, in_index):
    return dict(type='BinaryUPerHead', preset=preset, in_channels=in_channels,
                in_index=in_index, pool_scales=(1, 2, 3), channels=32,
                num_classes=5, norm_cfg=dict(type='BN', requires_grad=True),
                align_corners=False,
                loss_decode=dict(type='CrossEntropyLoss'))


def swin_segmentor(preset, head_dims=16, **overrides):
    """A tiny DIDBSwin UPerNet; ``head_dims=32`` runs the fused attention
    kernel, 16 the packed matmuls inside the attention's own code."""
    dims = 2 * head_dims
    return dict(
        type='BinaryEncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor',
                               size=(SIZE, SIZE)),
        backbone=dict(type='DIDBSwin', preset=preset,
                      preset_overrides=overrides, embed_dims=dims,
                      depths=(2, 2, 1), num_heads=(2, 4, 8), window_size=7,
                      out_indices=(0, 1, 2), pretrain_img_size=SIZE,
                      drop_path_rate=0.),
        decode_head=head(preset, [dims, 2 * dims, 4 * dims], [0, 1, 2]),
        test_cfg=dict(mode='whole'))


def vit_segmentor(preset, head_dims=16, **overrides):
    """A tiny DIDBViT (CLS token, global attention) with the binary neck."""
    dims = 2 * head_dims
    return dict(
        type='BinaryEncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor',
                               size=(SIZE, SIZE)),
        backbone=dict(type='DIDBViT', preset=preset,
                      preset_overrides=overrides, embed_dims=dims,
                      num_layers=2, num_heads=2, mlp_ratio=2, img_size=SIZE,
                      patch_size=8, out_indices=(0, 1)),
        neck=dict(type='BinaryMultiLevelNeck', preset=preset,
                  in_channels=[dims, dims], out_channels=32, scales=[2, 1]),
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


def trained(cfg, steps=4, seed=0):
    """A model after a few AdamW steps on random images and labels (the
    latent weights, shifts and scales of real training)."""
    torch.manual_seed(seed)
    model = MODELS.build(cfg)
    model.init_weights()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        x = torch.randn(2, 3, SIZE, SIZE)
        label = torch.randint(0, 5, (2, SIZE, SIZE))
        loss = torch.nn.functional.cross_entropy(
            torch.nn.functional.interpolate(
                model._forward(x), (SIZE, SIZE), mode='bilinear'), label)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def compare(model, size=SIZE):
    torch.manual_seed(1)
    size = (size, size) if isinstance(size, int) else size
    x = torch.randn(2, 3, *size)
    packed = convert_to_packed(model)
    with torch.no_grad():
        want = model._forward(x)
        got = packed._forward(x)
    return packed, got, want


def assert_same(got, want):
    """Packed and fake-quantized logits are the same bits (the exact
    inference arithmetic, mmseg_didb.binary.exact)."""
    agree = (got.argmax(1) == want.argmax(1)).float().mean().item()
    assert torch.equal(got, want), (
        f'argmax agreement {agree:.4f}, max |diff| '
        f'{(got - want).abs().max().item():.3g}')


def fused_attentions(packed):
    return sum(isinstance(m, PackedAttention) and m.fused
               for m in packed.modules())


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
    assert_same(got, want)
    # the original model is untouched (a copy was converted)
    assert any(type(m).__name__ == 'BinaryLinear' for m in model.modules())


@pytest.mark.parametrize('size', SIZES, ids=str)
@pytest.mark.parametrize('head_dims', [16, 32], ids=['matmuls', 'fused'])
@pytest.mark.parametrize('builder', [swin_segmentor, vit_segmentor],
                         ids=['swin', 'vit'])
@pytest.mark.parametrize('preset', BINARY_PRESETS)
def test_every_preset_packs_to_the_same_logits(preset, builder, head_dims,
                                               size):
    model = trained_looking(builder(preset, head_dims), seed=1)
    packed, got, want = compare(model, size)
    assert packed.pack_report.linears and packed.pack_report.attentions
    fused = fused_attentions(packed)
    assert bool(fused) == (head_dims == 32 and kernels_available())
    assert_same(got, want)


#: every DIDB switch of the preset table, and its documented alternatives
DIDB_SWITCHES = [dict(hfsc='off'), dict(hfsc='split'), dict(hfsc_low='ll'),
                 dict(diba_shortcut=False), dict(diba_local=False),
                 dict(token_rprelu='off'), dict(token_rprelu='dynamic'),
                 dict(norm='bn'), dict(attn='sab')]


@pytest.mark.parametrize('overrides', DIDB_SWITCHES, ids=str)
@pytest.mark.parametrize('builder', [swin_segmentor, vit_segmentor],
                         ids=['swin', 'vit'])
def test_every_didb_switch_packs_to_the_same_logits(builder, overrides):
    model = trained_looking(builder('didb', 32, **overrides), seed=2)
    _, got, want = compare(model, SIZES[1])
    assert_same(got, want)


@pytest.mark.parametrize('name', ['native', 'pytorch'])
@pytest.mark.parametrize('builder', [swin_segmentor, vit_segmentor],
                         ids=['swin', 'vit'])
def test_trained_weights_pack_to_the_same_logits(builder, name):
    """After real optimizer steps, with the C++ and the PyTorch kernels."""
    model = trained(builder('didb', 32))
    with variant(name if name == 'pytorch' else VARIANTS[0]):
        _, got, want = compare(model, SIZES[1])
    assert_same(got, want)


@pytest.mark.parametrize('config', ['didb_swin_t_ade20k.py',
                                    'didb_deit_s_ade20k.py'])
def test_full_configs_pack_to_the_same_logits_at_512(config):
    """The full DIDBSwin-T and DIDBViT DeiT-S UPerNets at 512x512, where a
    float32 softmax put attention probabilities within rounding of the
    {0, a} threshold and a float sgemm of the binary products rounded
    otherwise than the popcount kernels (45% of pixels agreed)."""
    cfg = Config.fromfile(str(REPO_ROOT / 'configs' / config)).model
    cfg.backbone.init_cfg = None
    cfg.pop('auxiliary_head')
    bn = dict(type='BN', requires_grad=True)
    cfg.decode_head.norm_cfg = bn
    if 'neck' in cfg:
        cfg.neck.norm_cfg = bn
    torch.manual_seed(0)
    model = MODELS.build(cfg)
    model.init_weights()
    model.train()
    with torch.no_grad():  # running magnitudes and BN statistics
        model._forward(torch.randn(2, 3, 128, 128))
    model.eval()
    torch.manual_seed(1)
    x = torch.randn(1, 3, 512, 512)
    packed = convert_to_packed(model)
    assert fused_attentions(packed) == (12 if kernels_available() else 0)
    with torch.no_grad():
        want = model._forward(x)
        got = packed._forward(x)
    assert_same(got, want)


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
    assert_same(got, want)


@pytest.mark.parametrize('builder', [swin_segmentor, vit_segmentor],
                         ids=['swin', 'vit'])
def test_exact_arithmetic_off_runs_the_training_operations(builder):
    """exact_arithmetic(False) switches every part (layers, norms,
    attention) back to the float operations of training, which autograd
    runs; on, inference is what the packed model computes."""
    model = trained_looking(builder('didb', 32), seed=3)
    torch.manual_seed(1)
    x = torch.randn(1, 3, 97, 131)
    float_path = model._forward(x).detach()  # autograd on: training ops
    with torch.no_grad():
        with exact_arithmetic(False):
            off = model._forward(x)
        on = model._forward(x)
        packed = convert_to_packed(model)._forward(x)
    assert torch.equal(off, float_path)
    assert torch.equal(on, packed)
    assert not torch.equal(on, off)  # two arithmetics, not one
