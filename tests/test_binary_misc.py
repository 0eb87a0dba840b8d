"""RPReLU / Token RPReLU, GRS regulariser, binarization switch and presets."""
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmseg_didb.binary import (PRESETS, ASMSign, BinaryLinear, TokenGrid,
                               BinaryLinearUnit, BinaryPreset, BWNWeight,
                               ChannelPReLU, ElasticSign, ElasticUnsigned,
                               GRSSchedule, ReActWeight, RPReLU, RSign, SAB,
                               SignSTE, SignWeight, TokenRPReLU, binarization,
                               binarization_state, grs_loss, resize_token_map,
                               resolve_preset, set_binarization)

# ----------------------------------------------------------------- RPReLU


def test_rprelu_hand_values_and_channel_dim():
    act = RPReLU(2)
    with torch.no_grad():
        act.gamma.copy_(torch.tensor([1.0, -1.0]))
        act.zeta.copy_(torch.tensor([0.5, 0.0]))
        act.slope.copy_(torch.tensor([0.25, 0.1]))
    x = torch.tensor([[3.0, -3.0], [0.0, 1.0]])
    # x - gamma = [[2, -2], [-1, 2]] -> PReLU -> [[2, -0.2], [-0.25, 2]] + zeta
    torch.testing.assert_close(act(x), torch.tensor([[2.5, -0.2], [0.25,
                                                                   2.0]]))
    maps = RPReLU(2, channel_dim=1)
    maps.load_state_dict(act.state_dict())
    xm = x.t().reshape(1, 2, 2, 1)  # channels on dim 1
    torch.testing.assert_close(maps(xm).reshape(2, 2).t(), act(x))
    assert torch.equal(ChannelPReLU(3)(torch.tensor([-4.0, 0.0, 2.0])),
                       torch.tensor([-1.0, 0.0, 2.0]))


def test_rprelu_gradcheck():
    act = RPReLU(3).double()
    with torch.no_grad():
        for p in act.parameters():
            p.uniform_(-0.5, 0.5)
    x = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(act, (x, ))


def _copy_channel_params(dst: RPReLU, src: RPReLU) -> None:
    with torch.no_grad():
        for name in ('gamma', 'zeta', 'slope'):
            getattr(dst, name).copy_(getattr(src, name))


def test_token_rprelu_zero_init_equals_rprelu():
    torch.manual_seed(0)
    ref = RPReLU(6)
    with torch.no_grad():
        for p in ref.parameters():
            p.uniform_(-0.5, 0.5)
    for mode in ('static', 'dynamic'):
        tok = TokenRPReLU(6, TokenGrid((3, 4), 1), mode=mode)
        _copy_channel_params(tok, ref)
        x = torch.randn(2, 1 + 12, 6)
        torch.testing.assert_close(tok(x), ref(x))
        x2 = torch.randn(2, 1 + 5 * 7, 6)  # other grid
        torch.testing.assert_close(tok(x2, hw=(5, 7)), ref(x2))


def test_token_rprelu_resize_constant_map_and_formula():
    tok = TokenRPReLU(4, TokenGrid((3, 4), 1))
    with torch.no_grad():
        tok.token_gamma[:, 1:].fill_(0.3)
        tok.token_gamma[:, 0].fill_(-2.0)  # CLS, not resized
        tok.token_zeta[:, 1:].fill_(-0.7)
        tok.token_zeta[:, 0].fill_(5.0)
    tg, tz = tok.token_maps((6, 5), 1 + 30)
    assert tg.shape == tz.shape == (1, 31, 1)
    torch.testing.assert_close(tg[:, 1:], torch.full((1, 30, 1), 0.3))
    torch.testing.assert_close(tz[:, 1:], torch.full((1, 30, 1), -0.7))
    assert tg[0, 0, 0].item() == -2.0 and tz[0, 0, 0].item() == 5.0
    x = torch.randn(2, 31, 4)
    y = tok(x, hw=(6, 5))
    ref = RPReLU(4)
    _copy_channel_params(ref, tok)
    torch.testing.assert_close(y, ref(x - tg) + tz)


def test_token_map_resize_is_position_embedding_interpolation():
    grid = torch.randn(1, 2, 3, 5)
    tokens = torch.cat([torch.randn(1, 1, 5), grid.reshape(1, 6, 5)], 1)
    out = resize_token_map(tokens, TokenGrid((2, 3), 1), (4, 7))
    expected = F.interpolate(grid.permute(0, 3, 1, 2), size=(4, 7),
                             mode='bilinear', align_corners=False)
    torch.testing.assert_close(
        out[:, 1:], expected.permute(0, 2, 3, 1).reshape(1, 28, 5))
    assert torch.equal(out[:, :1], tokens[:, :1])


def test_token_rprelu_dynamic_formula_and_gradcheck():
    tok = TokenRPReLU(3, mode='dynamic').double()
    with torch.no_grad():
        for p in tok.parameters():
            p.uniform_(-0.5, 0.5)
    x = torch.randn(2, 5, 3, dtype=torch.float64, requires_grad=True)
    m = x.mean(-1, keepdim=True)
    ref = RPReLU(3).double()
    _copy_channel_params(ref, tok)
    torch.testing.assert_close(tok(x), ref(x - m * tok.dyn_gamma) +
                               m * tok.dyn_zeta)
    assert torch.autograd.gradcheck(tok, (x, ))
    stat = TokenRPReLU(3, (2, 2)).double()
    with torch.no_grad():
        stat.token_gamma.normal_()
    assert torch.autograd.gradcheck(lambda t: stat(t, (3, 3)),
                                    (torch.randn(1, 9, 3, dtype=torch.float64,
                                                 requires_grad=True), ))


def test_token_rprelu_errors():
    with pytest.raises(ValueError, match='grid='):
        TokenRPReLU(4)
    with pytest.raises(ValueError, match='TokenGrid needs'):
        TokenGrid((0, 2))
    with pytest.raises(ValueError, match='TokenGrid needs'):
        TokenGrid((2, 2), -1)
    with pytest.raises(ValueError, match='dynamic'):
        TokenRPReLU(4, (2, 2), mode='learned')
    tok = TokenRPReLU(4, (2, 2))
    with pytest.raises(ValueError, match='hw'):
        tok(torch.randn(1, 9, 4))
    with pytest.raises(ValueError, match='expected'):
        tok(torch.randn(1, 9, 4), hw=(2, 3))


# ------------------------------------------------------------------- GRS


def test_grs_loss_hand_value():
    model = nn.Sequential(
        BinaryLinear(3, 2, weight_quantizer=SignWeight()),
        BinaryLinear(2, 2, weight_quantizer=ReActWeight()),
        BinaryLinear(2, 2, weight_quantizer=BWNWeight()), nn.Linear(2, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.5, -1.5, 1.0], [0.2, 0.2,
                                                               -0.2]]))
        model[1].weight.copy_(torch.tensor([[1.0, 3.0], [-0.5, 0.5]]))
        model[2].weight.copy_(torch.tensor([[1.0, 3.0], [-1.0, 1.0]]))
    # layer 0: a = [1, 0.2]; (|W| - a)^2 = [[.25, .25, 0], [0, 0, 0]]
    r0 = 0.5 / 6
    # layer 1: Wc = [[-1, 1], [-0.5, 0.5]], a = [2, 0.5] -> [[1, 1], [0, 0]]
    r1 = 2 / 4
    # layer 2: W - mean(W) = [[0, 2], [-2, 0]], a = 1.5
    r2 = (1.5**2 + 0.5**2 + 0.5**2 + 1.5**2) / 4
    torch.testing.assert_close(grs_loss(model),
                               torch.tensor((r0 + r1 + r2) / 3))
    model[2].weight_quantizer.enabled = False
    torch.testing.assert_close(grs_loss(model), torch.tensor((r0 + r1) / 2))
    loss = grs_loss(model)
    loss.backward()
    # d/dW of (1/2) mean((|W| - a)^2), a a detached target:
    # (1/2) (2/6) (|W| - a) sign(W) with |W| - a = [[-.5, .5, 0], [0, 0, 0]]
    torch.testing.assert_close(
        model[0].weight.grad,
        torch.tensor([[-1 / 12, -1 / 12, 0.0], [0.0, 0.0, 0.0]]))
    assert model[2].weight.grad is None and model[3].weight.grad is None
    empty = grs_loss(nn.Linear(2, 2))
    assert empty.item() == 0 and not empty.requires_grad


def test_grs_schedule_ramp():
    s = GRSSchedule(weight=0.1, warmup_iters=100, start_iter=50)
    assert s(0) == 0.0 and s(49) == 0.0 and s(50) == 0.0
    assert s(100) == pytest.approx(0.05)
    assert s(150) == pytest.approx(0.1) and s(10_000) == pytest.approx(0.1)
    assert GRSSchedule(0.2, 0)(0) == 0.2
    with pytest.raises(ValueError):
        GRSSchedule(-1.0, 10)


# ---------------------------------------------------------------- switch


def _toy_model() -> nn.Module:
    return nn.ModuleDict(
        dict(unit=BinaryLinearUnit(4, 4, 'react'),
             attn=ElasticUnsigned(),
             sab=SAB()))


def test_set_binarization_per_kind_and_state():
    model = _toy_model()
    assert binarization_state(model) == dict(weights=True, activations=True,
                                             attention=True)
    set_binarization(model, weights=False)
    assert binarization_state(model) == dict(weights=False, activations=True,
                                             attention=True)
    assert not model['unit'].linear.weight_quantizer.enabled
    assert model['unit'].linear.input_quantizer.enabled
    set_binarization(model, activations=False, attention=False)
    assert binarization_state(model) == dict(weights=False, activations=False,
                                             attention=False)
    model['sab'].enabled = True
    assert binarization_state(model)['attention'] == 'mixed'
    per = binarization_state(model, per_module=True)
    assert per['sab'] is True and per['attn'] is False
    assert per['unit.linear.weight_quantizer'] is False
    assert binarization_state(nn.Linear(2, 2)) == dict(weights=None,
                                                       activations=None,
                                                       attention=None)


def test_binarization_context_restores_previous_states():
    model = _toy_model()
    model['sab'].enabled = False
    before = binarization_state(model, per_module=True)
    with binarization(model, weights=False, activations=False,
                      attention=False) as m:
        assert m is model
        assert binarization_state(model) == dict(weights=False,
                                                 activations=False,
                                                 attention=False)
    assert binarization_state(model, per_module=True) == before
    with pytest.raises(RuntimeError):
        with binarization(model, attention=True):
            assert model['sab'].enabled
            raise RuntimeError('boom')
    assert binarization_state(model, per_module=True) == before


def test_all_off_unit_is_fp_unit():
    torch.manual_seed(0)
    unit = BinaryLinearUnit(4, 8, 'didb', grid=(2, 2))
    x = torch.randn(2, 4, 4)
    with binarization(unit, weights=False, activations=False):
        y = unit(x, (2, 2))
        lin = unit.linear
        ref = unit.act(
            unit.norm(F.linear(x, lin.weight, lin.bias)) + x.repeat(1, 1, 2),
            (2, 2))
    torch.testing.assert_close(y, ref, atol=1e-6, rtol=0)
    assert not torch.allclose(unit(x, (2, 2)), y)


# --------------------------------------------------------------- presets

#: the documented table (docs/method.md / docs/binary.md), field by field
DOCUMENTED = {
    #            weight   act        attn       unit   activ.    norm
    #            hfsc   diba_s diba_l token     grs
    'fp': ('fp', 'fp', 'fp', False, 'rprelu', 'ln',
           'off', False, False, 'off', False),
    'bnn': ('sign', 'ste', 'elastic', True, 'prelu', 'ln',
            'off', False, False, 'off', False),
    'react': ('react', 'rsign', 'elastic', True, 'rprelu', 'ln',
              'off', False, False, 'off', False),
    'bit': ('bwn', 'elastic', 'elastic', True, 'rprelu', 'ln',
            'off', False, False, 'off', False),
    'binaryvit': ('react', 'asm', 'elastic', True, 'rprelu', 'ln',
                  'off', False, False, 'off', True),
    'didb': ('react', 'rsign', 'elastic', True, 'rprelu', 'ln',
             'full', True, True, 'static', False),
}
FIELDS = ('weight', 'act', 'attn', 'unit', 'activation', 'norm', 'hfsc',
          'diba_shortcut', 'diba_local', 'token_rprelu', 'grs')


def test_preset_table_is_the_documented_one():
    assert set(PRESETS) == set(DOCUMENTED)
    for name, row in DOCUMENTED.items():
        p = resolve_preset(name)
        assert p is PRESETS[name] and p.name == name
        assert tuple(getattr(p, f) for f in FIELDS) == row, name
    assert not PRESETS['fp'].is_binary
    assert all(PRESETS[n].is_binary for n in DOCUMENTED if n != 'fp')


@pytest.mark.parametrize('name, wq, aq, attn', [
    ('fp', type(None), type(None), type(None)),
    ('bnn', SignWeight, SignSTE, ElasticUnsigned),
    ('react', ReActWeight, RSign, ElasticUnsigned),
    ('bit', BWNWeight, ElasticSign, ElasticUnsigned),
    ('binaryvit', ReActWeight, ASMSign, ElasticUnsigned),
    ('didb', ReActWeight, RSign, ElasticUnsigned),
])
def test_preset_builds_documented_quantizers(name, wq, aq, attn):
    p = PRESETS[name]
    assert type(p.weight_quantizer()) is wq
    assert type(p.act_quantizer(8, channel_dim=1)) is aq
    assert type(p.attn_quantizer()) is attn
    if aq is not type(None):
        assert p.act_quantizer(8, 1).channel_dim == 1


def test_preset_unit_activation():
    didb = PRESETS['didb']
    act = didb.unit_activation(8, grid=TokenGrid((2, 2), 1))
    assert isinstance(act, TokenRPReLU) and act.grid.num_extra == 1
    # tokens without a grid: an error naming the fix, not a silent RPReLU
    with pytest.raises(ValueError, match='grid=TokenGrid'):
        didb.unit_activation(8)
    assert type(didb.unit_activation(8, (2, 2), channel_dim=1)) is RPReLU
    dyn = resolve_preset('didb', token_rprelu='dynamic').unit_activation(8)
    assert isinstance(dyn, TokenRPReLU) and dyn.mode == 'dynamic'
    assert type(PRESETS['react'].unit_activation(8, (2, 2))) is RPReLU
    assert type(PRESETS['bnn'].unit_activation(8)) is ChannelPReLU


def test_resolve_preset_overrides_and_aliases():
    p = resolve_preset('didb', hfsc=False, token_rprelu=True, grs=True)
    assert (p.hfsc, p.token_rprelu, p.grs) == ('off', 'static', True)
    assert p.name == 'didb' and PRESETS['didb'].hfsc == 'full'
    assert resolve_preset('react', hfsc=True).hfsc == 'full'
    assert resolve_preset('didb', token_rprelu=False).token_rprelu == 'off'
    assert resolve_preset('didb', weight=False).weight == 'fp'
    assert resolve_preset('didb', hfsc=None) is PRESETS['didb']
    assert resolve_preset(dict(name='bit', attn='sab')).attn == 'sab'
    assert resolve_preset(PRESETS['bnn']) is PRESETS['bnn']
    assert PRESETS['react'].replace(norm='bn').norm == 'bn'
    full = dict(PRESETS['react'].to_dict(), name='custom', act='approx')
    assert resolve_preset(full) == BinaryPreset(**full)
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRESETS['didb'].hfsc = 'off'


def test_resolve_preset_errors_list_valid_choices():
    with pytest.raises(ValueError) as e:
        resolve_preset('didbb')
    for name in PRESETS:
        assert repr(name) in str(e.value)
    with pytest.raises(ValueError) as e:
        resolve_preset('didb', hfcs=False)
    assert 'hfcs' in str(e.value)
    for key in FIELDS:
        assert repr(key) in str(e.value)
    with pytest.raises(ValueError, match="'full'"):
        resolve_preset('didb', hfsc='half')
    with pytest.raises(ValueError, match='valid keys'):
        resolve_preset(dict(name='didb', windows=7))
    with pytest.raises(ValueError, match='name='):
        resolve_preset(dict(hfsc='off'))
    with pytest.raises(ValueError, match='bool'):
        resolve_preset('didb', grs='yes')
    with pytest.raises(ValueError, match='ambiguous'):
        resolve_preset('didb', weight=True)
    with pytest.raises(TypeError):
        resolve_preset(3)


def test_token_rprelu_loads_maps_from_another_grid():
    """Maps saved on a 4x4 reference grid load into an 8x8 one, resized."""
    src = TokenRPReLU(3, (4, 4))
    with torch.no_grad():
        src.token_gamma.copy_(torch.arange(16.).view(1, 16, 1))
        src.token_zeta.fill_(0.5)
    dst = TokenRPReLU(3, (8, 8))
    dst.load_state_dict(src.state_dict())
    assert dst.token_gamma.shape == (1, 64, 1)
    # same values as resizing the source maps to the new grid at run time
    g_src, z_src = src.token_maps((8, 8), 64)
    assert torch.allclose(dst.token_gamma, g_src)
    assert torch.allclose(dst.token_zeta, z_src)
    # a count that is no square grid still fails loudly
    bad = {'token_gamma': torch.zeros(1, 15, 1),
           'token_zeta': torch.zeros(1, 15, 1)}
    with pytest.raises(RuntimeError, match='size mismatch'):
        dst.load_state_dict({**dst.state_dict(), **bad})
