"""Fused packed units and the fused attention core against the PyTorch
modules they replace, under every kernel variant (and the PyTorch
fallback)."""
import mmseg_didb  # noqa: F401  (first: installs the mmcv-lite shims)

import pytest
import torch
from torch import nn

from mmseg_didb.binary import (PRESETS, BinaryConvUnit, BinaryLinearUnit,
                               ChannelShortcut, TokenGrid, TokenRPReLU,
                               haar_split, resolve_preset)
from mmseg_didb.deploy import (PackedAttention, PackedAttentionMatmuls,
                               PackedBinaryConvUnit, PackedBinaryLinearUnit,
                               UnitEpilogue, binary_linear_unit,
                               convert_to_packed, kernels_available,
                               pack_signs)
from mmseg_didb.deploy.attention import haar_split_tokens
from mmseg_didb.models.backbones.didb_swin import (BinaryPatchMerging,
                                                   DIDBWindowAttention)
from mmseg_didb.models.layers import DIDBAttention, window_attention_mask
from kernel_variants import VARIANTS, variant

torch.set_num_threads(2)
NATIVE = [v for v in VARIANTS if v != 'pytorch']


def trained_looking(module, seed=0):
    """Random shifts, slopes, token maps, norms and scales, as after
    training (every parameter moves away from its neutral init)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit('.', 1)[-1]
            if leaf in ('bias', 'gamma', 'zeta', 'k', 'dyn_gamma',
                        'dyn_zeta', 'token_gamma', 'token_zeta'):
                p.uniform_(-0.3, 0.3)
            elif leaf in ('slope', 'shortcut_scale', 'local_scale', 'mix'):
                p.uniform_(0.05, 1.2)
            elif leaf == 'weight' and p.dim() == 1:  # norms
                p.uniform_(0.5, 1.5)
            elif leaf == 'relative_position_bias_table':
                p.normal_(0, 0.5)
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    return module


@pytest.mark.parametrize('name', VARIANTS)
@pytest.mark.parametrize('res_c', [16, 48, 96, 110, None])
@pytest.mark.parametrize('act', ['none', 'prelu', 'rprelu', 'static',
                                 'dynamic'])
def test_linear_unit_epilogue_matches_pytorch(name, res_c, act):
    """The fused tail (LayerNorm, channel shortcut, activation terms) of the
    native kernel against UnitEpilogue.apply."""
    torch.manual_seed(0)
    rows, k, n, tokens = 2 * 19, 70, 48, 19
    x = torch.randn(rows, k)
    weight = pack_signs(torch.randn(n, k))
    scale, bias = torch.rand(n) + 0.5, torch.randn(n)
    ep = UnitEpilogue(ln_weight=torch.rand(n) + 0.5, ln_bias=torch.randn(n))
    if res_c is not None:
        ep.res = torch.randn(rows, res_c)
        ep.res_count = ChannelShortcut(res_c, n).count
    if act != 'none':
        ep.slope = torch.rand(n)
    if act in ('rprelu', 'static', 'dynamic'):
        ep.gamma, ep.zeta = torch.randn(n) * 0.3, torch.randn(n) * 0.3
    if act == 'static':
        ep.token_gamma, ep.token_zeta = torch.randn(tokens), torch.randn(tokens)
    if act == 'dynamic':
        ep.dyn_gamma, ep.dyn_zeta = torch.randn(n), torch.randn(n)
    with variant('pytorch'):
        want = binary_linear_unit(x, k, weight, scale, bias, epilogue=ep)
    with variant(name):
        got = binary_linear_unit(x, k, weight, scale, bias, epilogue=ep)
    assert torch.equal(got, want)


@pytest.mark.skipif(not kernels_available(), reason='needs the C++ kernels')
def test_native_epilogue_rejects_unknown_and_token_entries():
    """The kernels take the epilogue as named tensors: a name they do not
    know, or token terms on a convolution, is an error, not ignored."""
    from mmseg_didb.deploy.kernels import _C
    x, w = torch.randn(4, 64), pack_signs(torch.randn(8, 64))
    scale = torch.ones(8)
    with pytest.raises(RuntimeError, match="unknown epilogue entry 'lnw'"):
        _C.linear_unit(x, 64, weight=w, scale=scale,
                       epilogue=dict(lnw=torch.ones(8)))
    xp = torch.zeros(1, 4, 1, dtype=torch.long)
    wp = torch.zeros(8, 1, 1, dtype=torch.long)
    with pytest.raises(RuntimeError, match='no token terms'):
        _C.conv_unit(xp, 2, 2, wp, torch.zeros(8, 1), 64, 1, 1, 1, 1, 0, 0,
                     1, 1, scale, epilogue=dict(slope=torch.ones(8),
                                                dyn_gamma=torch.ones(8)))


def unit_cases():
    for preset in ('bnn', 'react', 'bit', 'binaryvit', 'didb'):
        yield preset, 'ln', None
    for token in ('static', 'dynamic'):
        yield 'didb', 'ln', token
    yield 'react', 'bn', None


@pytest.mark.parametrize('name', VARIANTS)
@pytest.mark.parametrize('widths', [(40, 40), (40, 120), (120, 40), (70, 32)])
@pytest.mark.parametrize('preset,norm,token', list(unit_cases()))
def test_packed_linear_unit_equals_the_unit(name, widths, preset, norm,
                                            token):
    p = resolve_preset(preset, norm=norm, token_rprelu=token)
    unit = BinaryLinearUnit(*widths, p, grid=TokenGrid((4, 5), 1))
    x = torch.randn(2, 1 + 6 * 7, widths[0]) * 2
    trained_looking(unit)
    unit.train()
    with torch.no_grad():
        unit(x, (6, 7))  # lazy scales (BiT), BN statistics move
    unit.eval()
    with variant(name):
        packed = PackedBinaryLinearUnit.from_unit(unit)
        with torch.no_grad():
            got, want = packed(x, (6, 7)), unit(x, (6, 7))
    assert torch.equal(got, want)


@pytest.mark.parametrize('name', VARIANTS)
def test_packed_patch_merging_equals_the_module(name):
    merge = trained_looking(BinaryPatchMerging(24, 48, PRESETS['didb'],
                                               grid=(3, 4)))
    x = torch.randn(2, 7 * 9, 24)
    with variant(name):
        packed = convert_to_packed(merge)
        assert isinstance(packed.reduction, PackedBinaryLinearUnit)
        with torch.no_grad():
            (got, hw), (want, hw2) = packed(x, (7, 9)), merge.eval()(x, (7, 9))
    assert hw == hw2 == (4, 5)
    assert torch.equal(got, want)


@pytest.mark.parametrize('name', VARIANTS)
@pytest.mark.parametrize('case', [
    (32, 64, 3, 1, 'rprelu'), (64, 32, 3, 2, 'rprelu'), (32, 32, 1, 1, 'prelu'),
    (24, 40, 3, 1, 'identity'), (32, 32, 3, 2, 'relu')])
@pytest.mark.parametrize('channels_last', [False, True])
def test_packed_conv_unit_equals_the_unit(name, case, channels_last):
    c_in, c_out, ks, stride, act = case
    preset = resolve_preset('bnn' if act == 'prelu' else 'react')
    act_module = {'identity': nn.Identity(), 'relu': nn.ReLU()}.get(act)
    unit = BinaryConvUnit(c_in, c_out, ks, preset, stride=stride,
                          padding=ks // 2, act=act_module,
                          bypass=max(c_in, c_out) % min(c_in, c_out) == 0)
    x = torch.randn(2, c_in, 9, 11) * 3
    trained_looking(unit)
    unit.train()
    with torch.no_grad():
        unit(x)  # running input magnitude, BN statistics
    unit.eval()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with variant(name):
        packed = PackedBinaryConvUnit.from_unit(unit)
        with torch.no_grad():
            got, want = packed(x), unit(x)
    assert got.shape == want.shape
    # the kernel writes channels-last rows
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got, want)


@pytest.mark.parametrize('low', ['mean', 'll'])
def test_haar_split_tokens_equals_haar_split(low):
    if not kernels_available():
        pytest.skip('native kernels only')
    torch.manual_seed(0)
    for (h, w), extra in [((5, 7), 0), ((6, 4), 1), ((1, 3), 2)]:
        x = torch.randn(2, extra + h * w, 12)
        got_l, got_h = haar_split_tokens(x, h, w, extra,
                                         0 if low == 'mean' else 1)
        grid = x[:, extra:].transpose(1, 2).reshape(2, 12, h, w)
        want_l, want_h = haar_split(grid, low=low)
        for got, want in ((got_l, want_l), (got_h, want_h)):
            assert torch.equal(got[:, :extra], x[:, :extra])
            assert torch.equal(got[:, extra:],
                               want.flatten(2).transpose(1, 2))


def window_attention(preset, embed_dims=64, heads=2, window=4):
    attn = DIDBWindowAttention(embed_dims, heads, resolve_preset(preset), window_size=window,
                               grid=(8, 8), attn_tokens=window * window)
    return trained_looking(attn)


def attention_cases():
    # (preset, overrides, grid, window, shift, embed_dims, heads)
    yield 'didb', {}, (9, 10), (4, 4), (2, 2), 64, 2
    yield 'didb', {}, (8, 8), (4, 4), (0, 0), 64, 2
    yield 'didb', dict(hfsc='split'), (9, 6), (4, 4), (2, 2), 128, 2
    yield 'didb', dict(hfsc_low='ll', token_rprelu='dynamic'), (5, 5), (5, 5), \
        (0, 0), 32, 1
    yield 'react', {}, (9, 10), (4, 4), (2, 2), 64, 2
    yield 'bit', {}, (9, 10), (4, 4), (2, 2), 64, 2
    yield 'binaryvit', {}, (7, 9), (4, 4), (2, 2), 64, 2
    yield 'react', dict(attn='sab'), (9, 10), (4, 4), (2, 2), 64, 2


def prime(attn, x, hw, **kw):
    """Lazy binarizer scales from one training-mode pass, then eval."""
    attn.train()
    with torch.no_grad():
        attn(x, hw, **kw)
    return attn.eval()


@pytest.mark.parametrize('name', NATIVE)
@pytest.mark.parametrize('case', list(attention_cases()))
def test_fused_window_attention_core_equals_the_attention(name, case):
    """The fused core (HFSC split, q/k/v binarizers, shifted padded
    windows, XNOR scores, softmax, {0, a} / SAB mask, AND-popcount, DIBA)
    gives the attention's own pre-proj output."""
    preset, overrides, hw, window, shift, dims, heads = case
    p = resolve_preset(preset, **overrides)
    attn = window_attention(p, dims, heads, window[0])
    torch.manual_seed(1)
    x = torch.randn(2, hw[0] * hw[1], dims)
    bias = attn.rel_pos_bias(window)
    kw = dict(window_size=window, shift_size=shift)
    prime(attn, x, hw, **kw)
    mask = window_attention_mask(hw, window, shift)
    with variant(name):
        packed = convert_to_packed(attn)
        core = packed.binary_matmuls
        assert isinstance(core, PackedAttention) and core.fused
        with torch.no_grad():
            got = core.attend(packed, x, hw, window, shift, bias, mask)
            want = attn._core(x, hw, window, shift, bias, mask)
            full, full_want = packed(x, hw, **kw), attn(x, hw, **kw)
    assert torch.equal(got, want)
    assert torch.equal(full, full_want)


@pytest.mark.parametrize('name', NATIVE)
@pytest.mark.parametrize('preset', ['didb', 'react', 'bit'])
def test_fused_global_attention_with_cls_token(name, preset):
    """ViT: one global window over the CLS token and the grid (no local
    DIBA term for the CLS token)."""
    attn = trained_looking(DIDBAttention(64, 2, PRESETS[preset],
                                         grid=TokenGrid((4, 5), 1)))
    torch.manual_seed(2)
    x = torch.randn(2, 1 + 6 * 7, 64)
    prime(attn, x, (6, 7))
    with variant(name):
        packed = convert_to_packed(attn)
        assert isinstance(packed.binary_matmuls, PackedAttention)
        with torch.no_grad():
            got = packed.binary_matmuls.attend(packed, x, (6, 7), None, None,
                                               None, None)
            want = attn._core(x, (6, 7), None, None, None, None)
    assert torch.equal(got, want)


def test_attention_without_a_fused_form_keeps_the_packed_matmuls():
    # 16-dim heads: not whole 32-bit words, so only the two products pack
    attn = window_attention('didb', embed_dims=32, heads=2)
    x = torch.randn(1, 64, 32)
    prime(attn, x, (8, 8), window_size=(4, 4))
    packed = convert_to_packed(attn)
    assert type(packed.binary_matmuls) is PackedAttentionMatmuls
    with torch.no_grad():
        assert torch.equal(packed(x, (8, 8), window_size=(4, 4)),
                           attn(x, (8, 8), window_size=(4, 4)))


def test_fused_core_falls_back_without_the_kernels():
    attn = window_attention('didb')
    x = torch.randn(1, 64, 64)
    prime(attn, x, (8, 8), window_size=(4, 4))
    packed = convert_to_packed(attn)
    with variant('pytorch'):
        assert not packed.binary_matmuls.fused
        with torch.no_grad():
            assert torch.equal(packed(x, (8, 8), window_size=(4, 4)),
                               attn(x, (8, 8), window_size=(4, 4)))


def test_token_maps_are_resized_once_per_grid():
    unit = trained_looking(BinaryLinearUnit(32, 32, 'didb', grid=(4, 4)))
    packed = PackedBinaryLinearUnit.from_unit(unit.eval())
    assert isinstance(packed.act, TokenRPReLU)
    with torch.no_grad():
        for hw in [(6, 6), (6, 6), (3, 5)]:
            x = torch.randn(1, hw[0] * hw[1], 32)
            assert torch.equal(packed(x, hw), unit(x, hw))
    assert sorted(packed._token_maps) == [((3, 5), 15), ((6, 6), 36)]
