"""Binarizers: forward values and backward gradients against hand-computed
tensors (BNN, Bi-Real, ReActNet, BiT, BinaryViT, BiViT formulas)."""
import copy
import math

import pytest
import torch

from mmseg_didb.binary import (ASMSign, ApproxSign, BWNWeight, ElasticSign,
                               ElasticUnsigned, PWSWeight, ReActWeight, RSign,
                               SAB, SignSTE, SignWeight, build_act_quantizer,
                               build_attn_quantizer, build_weight_quantizer,
                               sign)

X = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5])
G = torch.arange(1.0, 8.0)


def _fwd_bwd(q, x, g):
    x = x.clone().requires_grad_(True)
    y = q(x)
    y.backward(g)
    return y.detach(), x.grad


def test_sign_zero_is_plus_one():
    assert sign(torch.tensor([0.0, -0.0, -1e-30, 3.0])).tolist() == [
        1.0, 1.0, -1.0, 1.0
    ]


def test_sign_ste_forward_and_clipped_gradient():
    y, gx = _fwd_bwd(SignSTE(), X, G)
    assert y.tolist() == [-1, -1, -1, 1, 1, 1, 1]
    # grad * 1[|x| <= 1]
    assert gx.tolist() == [0, 2, 3, 4, 5, 6, 0]


def test_approx_sign_gradient_hand_values():
    y, gx = _fwd_bwd(ApproxSign(), X, G)
    assert y.tolist() == [-1, -1, -1, 1, 1, 1, 1]
    # grad * (2 - 2|x|) on |x| <= 1: x=-0.5 -> 1, x=0 -> 2, x=0.5 -> 1
    assert gx.tolist() == [0, 0, 3, 8, 5, 0, 0]


def test_approx_sign_gradient_is_derivative_of_bireal_polynomial():
    x = torch.linspace(-1.5, 1.5, 61, dtype=torch.float64)
    xr = x.clone().requires_grad_(True)
    poly = torch.where(xr < -1, -torch.ones_like(xr),
                       torch.where(xr < 0, 2 * xr + xr * xr,
                                   torch.where(xr < 1, 2 * xr - xr * xr,
                                               torch.ones_like(xr))))
    poly.sum().backward()
    _, gx = _fwd_bwd(ApproxSign(), x, torch.ones_like(x))
    torch.testing.assert_close(gx, xr.grad)


def test_rsign_shift_forward_and_gradients():
    q = RSign(2)
    with torch.no_grad():
        q.bias.copy_(torch.tensor([0.5, -0.5]))
    x = torch.tensor([[[0.2, 0.2], [-0.7, 0.7]]], requires_grad=True)
    y = q(x)
    y.sum().backward()
    # x + b = [[0.7, -0.3], [-0.2, 0.2]]
    assert y.tolist() == [[[1, -1], [-1, 1]]]
    expected_gx = torch.tensor([[[0.6, 1.4], [1.6, 1.6]]])
    torch.testing.assert_close(x.grad, expected_gx)
    torch.testing.assert_close(q.bias.grad, torch.tensor([2.2, 3.0]))


def test_rsign_channel_dim_one_on_maps():
    q = RSign(3, channel_dim=1)
    with torch.no_grad():
        q.bias.copy_(torch.tensor([10.0, -10.0, 0.0]))
    x = torch.randn(2, 3, 4, 5)
    y = q(x)
    assert (y[:, 0] == 1).all() and (y[:, 1] == -1).all()
    assert torch.equal(y[:, 2], sign(x[:, 2]))
    with pytest.raises(ValueError, match='channels'):
        q(torch.randn(2, 4, 3, 3))


def test_elastic_sign_lazy_init_values_and_lsq_gradient():
    q = ElasticSign(4)
    x = torch.tensor([[1.0, -0.5, 0.25, -2.0]], requires_grad=True)
    y = q(x)
    # alpha = 2 * mean|x| = 2 * 3.75 / 4
    alpha = 1.875
    assert q.alpha.item() == pytest.approx(alpha)
    assert y.tolist() == [[alpha, -alpha, alpha, -alpha]]
    y.backward(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))
    # grad_x = g * 1[|x / alpha| <= 1]; grad_alpha = sum(sign(x) g) / sqrt(N)
    assert x.grad.tolist() == [[1, 2, 3, 0]]
    # alpha = exp(log_alpha): the LSQ gradient reaches log_alpha times alpha
    assert q.log_alpha.grad.item() == pytest.approx(alpha * (1 - 2 + 3 - 4) / 2)
    # bias gets the same gradient as x, summed over tokens
    torch.testing.assert_close(q.bias.grad, torch.tensor([1.0, 2, 3, 0]))


def test_elastic_sign_init_once_and_survives_state_dict():
    q = ElasticSign(3)
    q(torch.full((2, 3), 4.0))
    assert q.alpha.item() == pytest.approx(8.0)
    q(torch.full((2, 3), 1.0))  # no re-initialisation
    assert q.alpha.item() == pytest.approx(8.0)
    q2 = ElasticSign(3)
    q2.load_state_dict(q.state_dict())
    y = q2(torch.tensor([[0.1, -0.1, 0.0]]))
    assert y.tolist() == [[8.0, -8.0, 8.0]]


def test_asm_shift_static_plus_dynamic_and_gradients():
    q = ASMSign(2)
    with torch.no_grad():
        q.bias.copy_(torch.tensor([0.1, -0.1]))
        q.k.copy_(torch.tensor([0.5, 1.0]))
    x = torch.tensor([[[1.0, -0.2], [0.0, 0.6]]], requires_grad=True)
    y = q(x)
    y.sum().backward()
    # mean over tokens [0.5, 0.2] -> shift [0.35, 0.1];
    # x' = [[0.65, -0.3], [-0.35, 0.5]]
    assert y.tolist() == [[[1, -1], [-1, 1]]]
    d = torch.tensor([[[0.7, 1.4], [1.3, 1.0]]])  # 2 - 2|x'|
    torch.testing.assert_close(x.grad, d)  # statistics detached
    torch.testing.assert_close(q.bias.grad, torch.tensor([-2.0, -2.4]))
    torch.testing.assert_close(q.k.grad, torch.tensor([-1.0, -0.48]))


def test_asm_non_detached_stats_gradient_and_shift_gradcheck():
    q = ASMSign(2, detach_stats=False)
    with torch.no_grad():
        q.bias.copy_(torch.tensor([0.1, -0.1]))
        q.k.copy_(torch.tensor([0.5, 1.0]))
    x = torch.tensor([[[1.0, -0.2], [0.0, 0.6]]], requires_grad=True)
    q(x).sum().backward()
    d = torch.tensor([[[0.7, 1.4], [1.3, 1.0]]])
    # extra term -k_c * sum_n d_nc / N through the token mean
    expected = d - torch.tensor([0.5, 1.0]) * d.sum(1, keepdim=True) / 2
    torch.testing.assert_close(x.grad, expected)
    qd = ASMSign(3, channel_dim=1, detach_stats=False).double()
    with torch.no_grad():
        qd.k.normal_()
        qd.bias.normal_()
    xm = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(qd.shift, (xm, ))


def test_sign_weight_scale_and_ste():
    w = torch.tensor([[0.5, -1.5, 0.25], [-0.2, 0.4, 0.0]], requires_grad=True)
    q = SignWeight()
    wb = q(w)
    torch.testing.assert_close(
        wb, torch.tensor([[0.75, -0.75, 0.75], [-0.2, 0.2, 0.2]]))
    torch.testing.assert_close(q.scale(w), torch.tensor([[0.75], [0.2]]))
    wb.backward(torch.tensor([[1.0, 2, 3], [4, 5, 6]]))
    # straight-through via clamp(W, -1, 1), scale detached
    assert w.grad.tolist() == [[1, 0, 3], [4, 5, 6]]


def test_react_weight_centred_values_and_gradient_through_centring():
    w = torch.tensor([[0.5, -1.5, 2.5], [0.3, 0.1, -0.1]], requires_grad=True)
    q = ReActWeight()
    wb = q(w)
    # Wc = [[0, -2, 2], [0.2, 0, -0.2]], a = rowmean|W| = [1.5, 1/6]
    expected = torch.tensor([[1.5, -1.5, 1.5], [1 / 6, 1 / 6, -1 / 6]])
    torch.testing.assert_close(wb, expected)
    wb.backward(torch.tensor([[1.0, 2, 3], [4, 5, 6]]))
    # m = g * 1[|Wc| <= 1] = [[1,0,0],[4,5,6]]; grad = m - rowmean(m)
    expected_grad = torch.tensor([[2 / 3, -1 / 3, -1 / 3], [-1.0, 0.0, 1.0]])
    torch.testing.assert_close(w.grad, expected_grad)


def test_react_weight_conv_rows_are_output_channels():
    w = torch.randn(4, 3, 3, 3)
    q = ReActWeight()
    wb = q(w)
    a = w.abs().mean(dim=(1, 2, 3), keepdim=True)
    wc = w - w.mean(dim=(1, 2, 3), keepdim=True)
    assert q.scale(w).shape == (4, 1, 1, 1)
    torch.testing.assert_close(wb, a * sign(wc))
    assert torch.equal(ReActWeight(center=False)(w), SignWeight()(w))


def test_bwn_weight_per_tensor_identity_ste():
    w = torch.tensor([[0.5, -1.5], [2.5, 0.5]], requires_grad=True)
    q = BWNWeight()
    wb = q(w)
    # mean = 0.5, mean|W| = 1.25, sign(W - mean) = [[1, -1], [1, 1]]
    torch.testing.assert_close(wb, 1.25 * torch.tensor([[1.0, -1], [1, 1]]))
    g = torch.tensor([[1.0, -2.0], [3.0, 4.0]])
    wb.backward(g)
    assert torch.equal(w.grad, g)
    assert q.scale(w).shape == (1, 1)


def test_pws_weight_learnable_row_scale():
    w = torch.tensor([[0.5, -1.5, 2.5], [0.3, 0.1, -0.1]], requires_grad=True)
    q = PWSWeight(2)
    wb = q(w)
    torch.testing.assert_close(q.alpha.detach(), torch.tensor([1.5, 1 / 6]))
    torch.testing.assert_close(wb, ReActWeight()(w))
    wb.backward(torch.tensor([[1.0, 2, 3], [4, 5, 6]]))
    # grad_alpha_r = sum_row g * sign(Wc): [1 - 2 + 3, 4 + 5 - 6]
    torch.testing.assert_close(q.alpha.grad, torch.tensor([2.0, 3.0]))
    torch.testing.assert_close(
        w.grad, torch.tensor([[2 / 3, -1 / 3, -1 / 3], [-1.0, 0.0, 1.0]]))
    with torch.no_grad():
        q.alpha.fill_(2.0)  # trained value is used, not re-initialised
    assert q(w).abs().unique().tolist() == [2.0]
    with pytest.raises(RuntimeError, match='out_channels'):
        PWSWeight()(w)


def test_elastic_unsigned_values_and_lsq_gradient():
    q = ElasticUnsigned()
    assert q.alpha.item() == pytest.approx(0.005)
    q.set_alpha(0.25)
    a = torch.tensor([0.05, 0.1, 0.15, 0.2, 0.25, 0.6], requires_grad=True)
    y = q(a)
    # q = A / alpha = [0.2, 0.4, 0.6, 0.8, 1.0, 2.4]
    assert y.tolist() == [0, 0, 0.25, 0.25, 0.25, 0.25]
    y.backward(torch.arange(1.0, 7.0))
    assert a.grad.tolist() == [1, 2, 3, 4, 5, 0]
    # sum(((round(q) - q) 1_mid + 1_{q>1}) g) / sqrt(N)
    expected = (-0.2 * 1 - 0.4 * 2 + 0.4 * 3 + 0.2 * 4 + 0 * 5 + 1 * 6)
    assert q.log_alpha.grad.item() == pytest.approx(
        0.25 * expected / math.sqrt(6), rel=1e-5)


def test_elastic_unsigned_default_on_softmax():
    a = torch.softmax(torch.randn(2, 3, 16, 16) * 3, dim=-1)
    y = ElasticUnsigned()(a)
    q = ElasticUnsigned()
    vals = y.unique()
    assert len(vals) == 2 and vals[0] == 0
    torch.testing.assert_close(vals[1], q.alpha.detach()[0])


def test_sab_threshold_and_straight_through():
    a = torch.tensor([[0.5, 0.1, 0.15, 0.25], [0.2, 0.3, 0.05, 0.45]],
                     requires_grad=True)
    y = SAB()(a)
    # thresholds 0.125 and 0.1125
    assert y.tolist() == [[1, 0, 1, 1], [1, 1, 0, 1]]
    g = torch.randn(2, 4)
    y.backward(g)
    assert torch.equal(a.grad, g)
    assert SAB(ratio=1.0)(a).sum().item() == 2
    with pytest.raises(ValueError):
        SAB(ratio=0.0)


@pytest.mark.parametrize('q', [
    SignSTE(), ApproxSign(), RSign(4), ElasticSign(4), ASMSign(4),
    SignWeight(), ReActWeight(), BWNWeight(), PWSWeight(3), ElasticUnsigned(),
    SAB()
])
def test_disabled_quantizer_is_identity(q):
    x = torch.randn(3, 4)
    q.enabled = False
    assert q(x) is x
    assert 'enabled=False' in repr(q)


def test_kinds_and_factories():
    assert SignSTE.kind == ASMSign.kind == 'activation'
    assert PWSWeight.kind == BWNWeight.kind == 'weight'
    assert SAB.kind == ElasticUnsigned.kind == 'attention'
    assert build_weight_quantizer('fp') is None
    assert isinstance(build_weight_quantizer('react'), ReActWeight)
    assert isinstance(build_act_quantizer('asm', 8, 1), ASMSign)
    assert build_act_quantizer('asm', 8, 1).channel_dim == 1
    assert isinstance(build_attn_quantizer('sab'), SAB)
    with pytest.raises(ValueError, match="'rsign'"):
        build_act_quantizer('rsing', 8)
    with pytest.raises(ValueError, match='num_channels'):
        RSign(None)


@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_quantizers_keep_low_precision_dtype(dtype):
    x = torch.randn(2, 5, 4).to(dtype).requires_grad_(True)
    for q in (SignSTE(), ApproxSign(), RSign(4), ElasticSign(4), ASMSign(4)):
        y = q(x)
        assert y.dtype == dtype
        y.float().sum().backward()
        assert x.grad.dtype == dtype
        x.grad = None
    a = torch.softmax(torch.randn(2, 4, 4), -1).to(dtype).requires_grad_(True)
    for q in (ElasticUnsigned(), SAB()):
        y = q(a)
        assert y.dtype == dtype
        y.float().sum().backward()
    eq = ElasticUnsigned()
    eq(a).float().sum().backward()
    assert eq.log_alpha.grad.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_quantizers_on_cuda_match_cpu():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 8)
    for q in (SignSTE(), ApproxSign(), RSign(8), ElasticSign(8), ASMSign(8)):
        with torch.no_grad():
            for p in q.parameters():
                p.uniform_(0.1, 0.5)
        q_cpu, q_gpu = q, copy.deepcopy(q).cuda()
        xc = x.clone().requires_grad_(True)
        xg = x.cuda().requires_grad_(True)
        yc, yg = q_cpu(xc), q_gpu(xg)
        torch.testing.assert_close(yg.cpu(), yc)
        yc.sum().backward()
        yg.sum().backward()
        torch.testing.assert_close(xg.grad.cpu(), xc.grad)
    w = torch.randn(5, 8)
    for q in (SignWeight(), ReActWeight(), BWNWeight()):
        torch.testing.assert_close(q(w.cuda()).cpu(), q(w))


def test_elastic_sign_init_under_torch_distributed(tmp_path):
    dist = pytest.importorskip('torch.distributed')
    if not dist.is_available() or dist.is_initialized():
        pytest.skip('needs an available, uninitialised torch.distributed')
    dist.init_process_group('gloo', init_method=f'file://{tmp_path}/store',
                            rank=0, world_size=1)
    try:
        q = ElasticSign(2)
        q(torch.tensor([[1.0, -3.0]]))
        assert q.alpha.item() == pytest.approx(4.0)  # 2 * mean|x| on 1 rank
    finally:
        dist.destroy_process_group()
