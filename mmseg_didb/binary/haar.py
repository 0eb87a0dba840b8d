"""Undecimated one-level 2-D Haar transform and the low/high split of HFSC.

Used by the high-fidelity similarity calculation (HFSC) of DIDB-ViT (Gao et al.
2025, arXiv 2507.02222): the block input X is split into a low-frequency part
X_L and a high-frequency part X_H = X - X_L, each projected to its own binary
query/key.

With a = x[i, j], b = x[i, j+1], c = x[i+1, j], d = x[i+1, j+1] (replicate
padding at the right and bottom border, stride 1, orthonormal 1/2 scale)::

    LL = (a + b + c + d) / 2     LH = (a + b - c - d) / 2
    HL = (a - b + c - d) / 2     HH = (a - b - c + d) / 2

At even (i, j) these are PyWavelets' ``dwt2(x, 'haar')`` coefficients
``cA, (cH, cV, cD)`` (default 'symmetric' mode, which equals replicate padding
for one sample), and ``x = (LL + LH + HL + HH) / 2`` exactly.
"""
from typing import Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ['haar2d', 'ihaar2d', 'haar_split']


def haar2d(x: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Undecimated one-level Haar transform of a (B, C, H, W) map.

    Args:
        x: input of shape (B, C, H, W), any H, W >= 1 (odd included).

    Returns:
        ``(ll, lh, hl, hh)``, each of the shape of ``x``; see the module
        docstring for the equations (lh: low along W, high along H, i.e.
        horizontal edges, PyWavelets' cH).
    """
    if x.dim() != 4:
        raise ValueError(f'haar2d expects (B, C, H, W), got shape '
                         f'{tuple(x.shape)}')
    if torch.compiler.is_compiling():
        # inductor's replication_pad2d_backward mispredicts the strides of a
        # channels-last view (a token map seen as (B, C, H, W)); eager mode
        # keeps the view and saves the copy
        x = x.contiguous()
    xp = F.pad(x, (0, 1, 0, 1), mode='replicate')
    a, b = xp[..., :-1, :-1], xp[..., :-1, 1:]
    c, d = xp[..., 1:, :-1], xp[..., 1:, 1:]
    s_top, s_bot = a + b, c + d
    d_top, d_bot = a - b, c - d
    ll = (s_top + s_bot) * 0.5
    lh = (s_top - s_bot) * 0.5
    hl = (d_top + d_bot) * 0.5
    hh = (d_top - d_bot) * 0.5
    return ll, lh, hl, hh


def ihaar2d(ll: Tensor, lh: Tensor, hl: Tensor, hh: Tensor) -> Tensor:
    """Inverse of :func:`haar2d`, per position: ``(LL + LH + HL + HH) / 2``.

    Exact for every position, borders included.
    """
    return (ll + lh + hl + hh) * 0.5


def haar_split(x: Tensor, low: str = 'mean') -> Tuple[Tensor, Tensor]:
    """Low/high band split of a (B, C, H, W) map for HFSC (DIDB-ViT).

    ``X_L`` is the Haar low band at the scale of ``X``, i.e. the local 2x2
    mean ``LL / 2``, and ``X_H = X - X_L = (LH + HL + HH) / 2`` is the
    locally zero-mean detail (docs/method.md, "HFSC").

    Args:
        x: input map (B, C, H, W).
        low: ``'mean'`` (default: ``X_L = LL / 2``, the local 2x2 mean) or
            ``'ll'`` (``X_L = LL``, the orthonormal coefficient, twice the
            local mean; an earlier reconstruction kept for comparison: on
            smooth maps its ``X - LL`` is close to ``-X_L``, so the two bands
            carry nearly the same signal).

    Returns:
        ``(x_low, x_high)`` with ``x_high = x - x_low``, so they sum to ``x``.

    Reconstruction: DIDB-ViT takes the low band of a Haar transform as X_L and
    the residual as X_H; the normalisation is not stated in the text we could
    read, and the local mean is the one for which ``X_H`` is a high-pass band.
    """
    if low not in ('mean', 'll'):
        raise ValueError(f"haar_split low must be 'mean' or 'll', got {low!r}")
    ll = haar2d(x)[0]
    x_low = ll if low == 'll' else ll * 0.5
    return x_low, x - x_low
