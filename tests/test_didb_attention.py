"""DIDBAttention / BinaryMlp / window machinery: exactness, DIBA, HFSC, grads."""
import pytest
import torch
import torch.nn.functional as F

import mmseg_didb  # noqa: F401
from mmseg_didb.binary.haar import haar_split
from mmseg_didb.binary.presets import PRESETS
from mmseg_didb.binary.rprelu import TokenGrid, TokenRPReLU
from mmseg_didb.models.layers import (BinaryMlp, DIDBAttention, DIDBBlock,
                                      from_windows, to_windows,
                                      window_attention_mask)

torch.set_num_threads(1)
ALL_PRESETS = sorted(PRESETS)


def _copy_fused_qkv(attn: DIDBAttention, qkv: torch.nn.Linear,
                    proj: torch.nn.Linear) -> None:
    C = attn.embed_dims
    with torch.no_grad():
        units = (attn.similarity.q, attn.similarity.k, attn.v)
        for i, unit in enumerate(u.linear for u in units):
            unit.weight.copy_(qkv.weight[i * C:(i + 1) * C])
            unit.bias.copy_(qkv.bias[i * C:(i + 1) * C])
        attn.proj.linear.weight.copy_(proj.weight)
        attn.proj.linear.bias.copy_(proj.bias)


def test_fp_global_equals_timm_vit_attention():
    from timm.models.vision_transformer import Attention
    torch.manual_seed(0)
    ref = Attention(32, num_heads=4, qkv_bias=True).eval()
    attn = DIDBAttention(32, 4, PRESETS['fp'], grid=TokenGrid((5, 6), 1)).eval()
    _copy_fused_qkv(attn, ref.qkv, ref.proj)
    x = torch.randn(2, 1 + 5 * 6, 32)
    torch.testing.assert_close(attn(x, (5, 6)), ref(x), atol=1e-5, rtol=1e-5)


def test_fp_shifted_windows_equal_timm_window_attention():
    from timm.models.swin_transformer import SwinTransformerBlock
    torch.manual_seed(0)
    blk = SwinTransformerBlock(16, (8, 12), num_heads=2, window_size=4,
                               shift_size=2).eval()
    attn = DIDBAttention(16, 2, PRESETS['fp']).eval()
    _copy_fused_qkv(attn, blk.attn.qkv, blk.attn.proj)
    x = torch.randn(2, 8, 12, 16)
    ref = blk._attn(x).reshape(2, 96, 16)
    out = attn(x.reshape(2, 96, 16), (8, 12), window_size=4, shift_size=2,
               rel_pos_bias=blk.attn._get_rel_pos_bias()[0])
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # without the shift mask the result must differ (the mask is used)
    bad = attn(x.reshape(2, 96, 16), (8, 12), window_size=4, shift_size=2,
               rel_pos_bias=blk.attn._get_rel_pos_bias()[0],
               attn_mask=torch.zeros(6, 16, 16))
    assert (bad - ref).abs().max() > 1e-3


def test_windows_roundtrip_and_padding_mask():
    x = torch.randn(2, 5 * 7, 3)
    for ss in [(0, 0), (2, 1)]:
        w = to_windows(x, (5, 7), (4, 3), ss)
        assert w.shape == (2 * 2 * 3, 12, 3)
        torch.testing.assert_close(from_windows(w, (5, 7), (4, 3), ss), x)
    assert window_attention_mask((8, 8), (4, 4), (0, 0)) is None
    mask = window_attention_mask((3, 3), (4, 4), (0, 0))
    pad_key = torch.ones(4, 4, dtype=torch.bool)
    pad_key[:3, :3] = False
    assert mask.shape == (1, 16, 16)
    assert torch.equal(mask[0] < 0, pad_key.flatten()[None].expand(16, 16))


@pytest.mark.parametrize('preset', ['fp', 'didb', 'bit'])
def test_padded_window_equals_global_attention(preset):
    """A 3x5 map in one padded 4x8 window == global attention on 15 tokens:
    padding keys are masked and HFSC / N8 act on the unpadded map. (float64:
    binarizers are discontinuous, float32 summation-order noise can flip a
    rounding in the {0, a} binarizer.)"""
    torch.manual_seed(0)
    attn = DIDBAttention(16, 2, PRESETS[preset], grid=(3, 5)).double().eval()
    x = torch.randn(2, 15, 16, dtype=torch.float64)
    with torch.no_grad():
        glob = attn(x, (3, 5))
        win = attn(x, (3, 5), window_size=(4, 8))
    torch.testing.assert_close(win, glob, atol=1e-5, rtol=1e-5)


def test_diba_constant_values_keep_only_scaled_shortcut():
    """With identical v_j, sum_j Ab_ij (v_j - v_i) = 0: out_i = l_s * v_i."""
    torch.manual_seed(0)
    attn = DIDBAttention(8, 2, PRESETS['didb'], grid=(4, 4)).eval()
    with torch.no_grad():
        attn.aggregation.shortcut_scale.uniform_(0.5, 2.0)
    qs = [torch.randn(3, 16, 8).sign()] * 2
    ks = [torch.randn(3, 16, 8).sign()] * 2
    v = torch.randn(1, 1, 8).expand(3, 16, 8).contiguous()
    out = attn.attend(qs, ks, v)
    torch.testing.assert_close(out, (attn.aggregation.shortcut_scale * v))
    # without the shortcut term the output is Ab V, which is not l_s v
    plain = DIDBAttention(8, 2, PRESETS['didb'].replace(diba_shortcut=False),
                          grid=(4, 4)).eval()
    assert (plain.attend(qs, ks, v) - v).abs().max() > 1e-2


def test_diba_local_term_is_sum_of_neighbour_differences():
    attn = DIDBAttention(4, 1, PRESETS['didb'], grid=TokenGrid((3, 4), 1))
    v = torch.randn(2, 1 + 12, 4)
    with torch.no_grad():
        attn.aggregation.local_scale.uniform_(0.5, 2.0)
    got = attn.aggregation.local_term(v, (3, 4))
    grid = v[:, 1:].reshape(2, 3, 4, 4)
    padded = F.pad(grid, (0, 0, 1, 1, 1, 1))
    want = torch.zeros_like(grid)
    for dh in (-1, 0, 1):
        for dw in (-1, 0, 1):
            if dh or dw:
                want += padded[:, 1 + dh:4 + dh, 1 + dw:5 + dw] - grid
    want = want.reshape(2, 12, 4) * attn.aggregation.local_scale.detach()
    torch.testing.assert_close(got[:, 1:], want)
    assert torch.equal(got[:, :1], torch.zeros(2, 1, 4))  # CLS: no local term


def test_hfsc_split_low_is_local_mean_and_high_the_rest():
    attn = DIDBAttention(4, 1, PRESETS['didb'], grid=TokenGrid((4, 6), 1))
    x = torch.randn(2, 1 + 24, 4)
    low, high = attn.similarity.band_split(x, (4, 6))
    grid = x[:, 1:].transpose(1, 2).reshape(2, 4, 4, 6)
    mean = F.avg_pool2d(F.pad(grid, (0, 1, 0, 1), mode='replicate'), 2, 1)
    torch.testing.assert_close(low[:, 1:], mean.flatten(2).transpose(1, 2))
    torch.testing.assert_close(high[:, 1:], x[:, 1:] - low[:, 1:])
    # the CLS token has no grid: both branches see the token itself
    assert torch.equal(low[:, :1], x[:, :1]) and torch.equal(high[:, :1],
                                                             x[:, :1])
    # constant map: the default (local mean) leaves no high-frequency
    # content; the earlier 'll' reconstruction, reachable from the preset,
    # takes LL = twice the local mean, so its residual is -x
    const = torch.ones(1, 24, 4)
    plain = DIDBAttention(4, 1, PRESETS['didb'], grid=(4, 6))
    assert plain.similarity.band_split(const, (4, 6))[1].abs().max() < 1e-6
    ll = DIDBAttention(4, 1, PRESETS['didb'].replace(hfsc_low='ll'),
                       grid=(4, 6))
    torch.testing.assert_close(ll.similarity.band_split(const, (4, 6))[1],
                               -const)


def test_attention_dropout_keeps_binary_probabilities():
    torch.manual_seed(0)
    attn = DIDBAttention(8, 2, PRESETS['react'], attn_drop=0.5)
    attn.train()
    seen = []
    attn.attn_quant.register_forward_hook(
        lambda m, i, o: seen.append(o.detach()))
    attn(torch.randn(2, 16, 8), (4, 4))
    values = seen[0].unique()
    # dropout runs before the {0, a} binarizer: no value a / (1 - p)
    assert len(values) == 2 and values[0] == 0
    torch.testing.assert_close(values[1:], attn.attn_quant.alpha.detach())


def test_attention_scale_stays_positive_under_any_gradient():
    torch.manual_seed(0)
    attn = DIDBAttention(8, 2, PRESETS['react'], attn_tokens=16)
    opt = torch.optim.AdamW([attn.attn_quant.log_alpha], lr=0.1)
    for _ in range(100):
        opt.zero_grad()
        out = attn(torch.randn(2, 16, 8), (4, 4))
        # a loss that pushes alpha down as hard as it can
        (attn.attn_quant.alpha * 1e3 + out.sum() * 0).sum().backward()
        opt.step()
    alpha = float(attn.attn_quant.alpha)
    assert 0 < alpha < 1 / 16
    out = attn(torch.randn(2, 16, 8), (4, 4))
    assert torch.isfinite(out).all()


def test_submodule_names_follow_the_contract():
    didb = DIDBAttention(16, 2, PRESETS['didb'], grid=(4, 4))
    sim, agg = didb.similarity, didb.aggregation
    for name in ('q_low', 'k_low', 'q_high', 'k_high'):
        assert hasattr(sim, name)
    assert hasattr(didb, 'v') and hasattr(didb, 'proj')
    assert not hasattr(sim, 'q')
    assert sim.mix.shape == (2, 2)
    assert agg.shortcut_scale.shape == (16, )
    assert torch.all(agg.shortcut_scale == 1)
    assert torch.allclose(agg.local_scale, torch.full((16, ), 0.1))
    assert isinstance(didb.proj.act, TokenRPReLU)
    # {0, a} binarizer starts at 1/N (N = 16 keys)
    assert torch.allclose(didb.attn_quant.alpha, torch.tensor([1 / 16]))
    plain = DIDBAttention(16, 2, PRESETS['didb'].replace(
        hfsc=False, diba_local=False, diba_shortcut=False, token_rprelu=False))
    assert hasattr(plain.similarity, 'q')
    assert not hasattr(plain.similarity, 'q_low')
    assert not hasattr(plain.similarity, 'mix')
    assert plain.aggregation.shortcut_scale is None
    assert plain.aggregation.local_scale is None
    assert not list(plain.aggregation.parameters())
    assert not isinstance(plain.proj.act, TokenRPReLU)
    split = DIDBAttention(16, 2, PRESETS['didb'].replace(hfsc='split'),
                          grid=(4, 4))
    assert split.similarity.q_low.linear.weight.shape == (8, 16)


def test_bad_inputs_raise():
    attn = DIDBAttention(16, 2, PRESETS['didb'], grid=TokenGrid((4, 4), 1))
    with pytest.raises(ValueError, match='tokens'):
        attn(torch.randn(1, 16, 16), (4, 4))
    with pytest.raises(ValueError, match='extra tokens'):
        attn(torch.randn(1, 17, 16), (4, 4), window_size=2)
    with pytest.raises(ValueError, match='grid=TokenGrid'):
        DIDBAttention(16, 2, PRESETS['didb'])
    with pytest.raises(ValueError, match='divisible'):
        DIDBAttention(15, 2, PRESETS['fp'])
    # inner layers take the model's resolved preset, not a name
    with pytest.raises(TypeError, match='resolve_preset'):
        DIDBAttention(16, 2, 'didb', grid=(4, 4))
    with pytest.raises(TypeError, match='resolve_preset'):
        DIDBBlock(16, 2, preset=dict(name='didb'), grid=(4, 4))


@pytest.mark.parametrize('preset', ALL_PRESETS)
def test_block_gradients_reach_every_parameter(preset):
    torch.manual_seed(0)
    blk = DIDBBlock(16, 2, mlp_ratio=2, preset=PRESETS[preset],
                    grid=TokenGrid((4, 4), 1))
    x = torch.randn(2, 17, 16)
    (blk(x, (4, 4)) * torch.randn(2, 17, 16)).sum().backward()
    dead = [n for n, p in blk.named_parameters()
            if p.grad is None or not p.grad.abs().max() > 0]
    assert not dead, dead


def test_block_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    blk = DIDBBlock(16, 2, preset=PRESETS['didb'], grid=(4, 4))
    x = torch.randn(2, 16, 16, requires_grad=True)
    blk(x, (4, 4)).sum().backward()
    ref = [p.grad.clone() for p in blk.parameters()]
    blk.zero_grad()
    blk.with_cp = True
    blk(x, (4, 4)).sum().backward()
    for a, p in zip(ref, blk.parameters()):
        torch.testing.assert_close(p.grad, a)


def test_binary_mlp_fp_is_timm_mlp():
    from timm.layers import Mlp
    torch.manual_seed(0)
    ref = Mlp(8, 32)
    mlp = BinaryMlp(8, 32, PRESETS['fp'])
    with torch.no_grad():
        for a, b in (('fc1', 'fc1'), ('fc2', 'fc2')):
            getattr(mlp, a).linear.weight.copy_(getattr(ref, b).weight)
            getattr(mlp, a).linear.bias.copy_(getattr(ref, b).bias)
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(mlp(x), ref(x))
    binary = BinaryMlp(8, 32, PRESETS['react'])
    assert binary.fc1.shortcut.mode == 'repeat'
    assert binary.fc2.shortcut.mode == 'average'
