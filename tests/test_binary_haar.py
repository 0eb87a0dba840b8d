"""Undecimated Haar: agreement with PyWavelets, perfect reconstruction and
the HFSC low/high split."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmseg_didb.binary import haar2d, haar_split, ihaar2d

pywt = pytest.importorskip('pywt')


@pytest.mark.parametrize('hw', [(4, 6), (5, 7), (1, 3), (8, 1), (9, 9)])
def test_haar2d_matches_pywavelets_on_even_positions(hw):
    rng = np.random.RandomState(0)
    x = rng.randn(2, 3, *hw)
    ca, (ch, cv, cd) = pywt.dwt2(x, 'haar')  # default 'symmetric' mode
    bands = haar2d(torch.from_numpy(x))
    for ref, band in zip((ca, ch, cv, cd), bands):
        assert band.shape == x.shape  # undecimated, stride 1
        np.testing.assert_allclose(band.numpy()[..., ::2, ::2], ref,
                                   atol=1e-12)


def test_haar2d_odd_positions_are_shifted_transform():
    # stride 1: the transform at (i, j) equals the decimated one of x shifted
    x = torch.randn(1, 2, 6, 8, dtype=torch.float64)
    full = haar2d(x)
    shifted = haar2d(x[..., 1:, 1:])
    for band, ref in zip(full, shifted):
        torch.testing.assert_close(band[..., 1:, 1:][..., ::2, ::2],
                                   ref[..., ::2, ::2])


def test_haar2d_perfect_reconstruction_and_split():
    x = torch.randn(2, 4, 7, 10)
    torch.testing.assert_close(ihaar2d(*haar2d(x)), x)
    # default split: X_L is the local 2x2 mean (replicate padding right /
    # bottom), i.e. LL / 2, and X_H = X - X_L = (LH + HL + HH) / 2
    mean = F.avg_pool2d(F.pad(x, (0, 1, 0, 1), mode='replicate'), 2, 1)
    low, high = haar_split(x)
    torch.testing.assert_close(low, mean)
    torch.testing.assert_close(low, haar2d(x)[0] / 2)
    _, lh, hl, hh = haar2d(x)
    torch.testing.assert_close(high, (lh + hl + hh) / 2)
    torch.testing.assert_close(low + high, x)
    # the earlier reconstruction stays available: X_L = LL = 2 * mean
    low_ll, high_ll = haar_split(x, low='ll')
    torch.testing.assert_close(low_ll, 2 * mean)
    torch.testing.assert_close(low_ll + high_ll, x)
    with pytest.raises(ValueError, match='mean'):
        haar_split(x, low='avg')


def test_haar_split_bands_carry_different_signals_on_smooth_maps():
    # a smooth, layer-normalised map (what HFSC sees): the default high band
    # is a zero-mean detail, not the negated low band of the 'll' split
    torch.manual_seed(0)
    x = F.interpolate(torch.randn(2, 8, 6, 6), size=(24, 24),
                      mode='bicubic', align_corners=False)
    x = F.layer_norm(x.permute(0, 2, 3, 1), (8, )).permute(0, 3, 1, 2)

    def corr(a, b):
        a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
        return float((a * b).sum() / (a.norm() * b.norm()))

    low, high = haar_split(x)
    low_ll, high_ll = haar_split(x, low='ll')
    assert corr(low_ll, high_ll) < -0.9  # 'll': X - LL is about -X_L
    assert abs(corr(low, high)) < 0.2
    # on a smooth map the detail band is much weaker than the low band
    assert high.abs().mean() < 0.3 * low.abs().mean()
    assert high_ll.abs().mean() > 0.9 * low.abs().mean()


def test_haar2d_constant_and_ramp():
    c = torch.full((1, 1, 5, 5), 3.0)
    ll, lh, hl, hh = haar2d(c)
    assert torch.equal(ll, torch.full_like(c, 6.0))
    for band in (lh, hl, hh):
        assert torch.equal(band, torch.zeros_like(c))
    # horizontal ramp x[i, j] = j: only HL (high along W) responds, -1 inside
    ramp = torch.arange(5.0).expand(1, 1, 5, 5).contiguous()
    _, lh, hl, hh = haar2d(ramp)
    assert torch.equal(lh, torch.zeros_like(ramp))
    assert torch.equal(hh, torch.zeros_like(ramp))
    assert (hl[..., :-1] == -1).all() and (hl[..., -1] == 0).all()


def test_haar2d_gradcheck_and_bad_input():
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: haar2d(t), (x, ))
    with pytest.raises(ValueError, match='B, C, H, W'):
        haar2d(torch.randn(3, 4, 5))
