"""DIBA: the differential-information aggregation of DIDB attention.

Paper: Gao et al., "High-Fidelity Differential-information Driven Binary Vision
Transformer" (DIDB-ViT), arXiv 2507.02222, Sec. 3; docs/method.md, section 3.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmseg_didb.binary.compact import ternary_saves
from mmseg_didb.binary.exact import compute_dtype
from mmseg_didb.binary.presets import BinaryPreset
from .tokens import join_token_grid, split_token_grid

__all__ = ['DIBAggregation']


class DIBAggregation(nn.Module):
    """``Ab V`` plus the differential terms lost by binary probabilities.

    DIBA (DIDB-ViT, arXiv 2507.02222, Sec. 3; docs/method.md, section 3),
    for token ``i`` of one head:

    ``out_i = (Ab V)_i + (l_s - k_i) v_i + l_l * sum_{j in N8(i)} (v_j - v_i)``

    with ``k_i = sum_j Ab_ij`` (a popcount times ``a``), ``l_s`` per channel
    (init 1, :meth:`shortcut_term`) and ``l_l`` per channel (init 0.1,
    :meth:`local_term`); N8 are the 8 grid neighbours with zero padding, extra
    tokens get no local term. All terms use the binarized ``V`` that enters
    ``Ab V``, so ``(Ab V)_i - k_i v_i = sum_j Ab_ij (v_j - v_i)`` exactly.
    ``preset.diba_shortcut`` / ``preset.diba_local`` switch the terms; with
    both off this is ``Ab V``.

    Args:
        embed_dims: Channels ``C`` of ``V``.
        num_heads: Attention heads.
        preset: The resolved preset.
        shortcut_init: Start value of ``l_s``.
        local_init: Start value of ``l_l``.
        num_extra_tokens: Leading tokens without a grid position.
    """

    def __init__(self, embed_dims: int, num_heads: int, preset: BinaryPreset,
                 shortcut_init: float = 1.0, local_init: float = 0.1,
                 num_extra_tokens: int = 0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dims = embed_dims // num_heads
        self.num_extra_tokens = num_extra_tokens
        self.shortcut_scale: Optional[nn.Parameter] = None
        self.local_scale: Optional[nn.Parameter] = None
        if preset.diba_shortcut:
            self.shortcut_scale = nn.Parameter(
                torch.full((embed_dims, ), float(shortcut_init)))
        if preset.diba_local:
            self.local_scale = nn.Parameter(
                torch.full((embed_dims, ), float(local_init)))

    def forward(self, attn: Tensor, v: Tensor,
                matmuls: Optional[nn.Module] = None,
                binary: bool = False,
                levels: Optional[Tuple[float, float]] = None) -> Tensor:
        """``Ab V`` plus the shortcut term, per head.

        Args:
            attn: Binarized probabilities ``(B, heads, N, N)``.
            v: Binarized values ``(B, heads, N, d)``.
            matmuls: Packed products of a deployed model, or None.
            binary: Both ``attn`` and ``v`` are binary (``{0, a}`` and
                ``{-1, 0, +1}``): ``Ab V`` saves them compactly for backward.
            levels: ``(a, m)``, the levels of ``Ab`` and ``V``, for exact
                inference (:meth:`exact_forward`).
        """
        if levels is not None:
            return self.exact_forward(attn, v, *levels, matmuls=matmuls)
        if matmuls is not None:
            out = matmuls.aggregate(attn, v)
        else:
            with ternary_saves(binary):
                out = attn @ v
        if self.shortcut_scale is not None:
            out = out + self.shortcut_term(attn, v)
        return out

    def exact_forward(self, attn: Tensor, v: Tensor, prob_level: float,
                      v_level: float,
                      matmuls: Optional[nn.Module] = None) -> Tensor:
        """:meth:`forward` of inference, from exact integer counts.

        With ``M = 1[Ab > 0]`` and ``n = M sign(V)`` (integers; AND-popcounts
        in a deployed model), ``Ab V = n * (a m)`` and ``k_i = a * sum_j
        M_ij``, each rounded once in float32, as the packed kernels compute
        them (docs/method.md, "Exact inference"); zero-padded values count
        as 0.
        """
        dtype = compute_dtype(v)
        mask = (attn > 0).to(dtype)
        signs = torch.sign(v.to(dtype))
        counts = mask @ signs if matmuls is None else matmuls.counts(
            mask, signs)
        like = dict(dtype=dtype, device=v.device)
        out = counts * torch.tensor(prob_level * v_level, **like)
        if self.shortcut_scale is not None:
            row_sum = mask.sum(dim=-1, keepdim=True) * torch.tensor(
                prob_level, **like)
            l_s = self.shortcut_scale.detach().to(dtype).view(
                1, self.num_heads, 1, self.head_dims)
            out = out + (l_s - row_sum) * v.to(dtype)
        return out.to(v.dtype)

    def shortcut_term(self, attn: Tensor, v: Tensor) -> Tensor:
        """``(l_s - k_i) v_i`` with ``k_i`` the row sum of ``Ab``."""
        row_sum = attn.sum(dim=-1, keepdim=True)
        l_s = self.shortcut_scale.view(1, self.num_heads, 1, self.head_dims)
        return (l_s - row_sum) * v

    def local_term(self, v: Tensor, hw: Tuple[int, int],
                   v_level: Optional[float] = None) -> Tensor:
        """``l_l * sum_{j in N8(i)} (v_j - v_i)`` on the full map ``(B, N, C)``,
        zero padding; 0 at extra tokens. Needs ``preset.diba_local``.

        The neighbour sum is ``box3x3(v) - 9 v_i`` (the 3x3 box holds
        ``v_i``). ``v_level``: exact inference, the box from the integer
        box of ``sign(V)`` times the level of ``V`` (as the packed kernels).
        """
        if self.local_scale is None:
            raise RuntimeError('the DIBA local term is off in this preset '
                               '(diba_local=False)')
        extra, grid = split_token_grid(v, hw, self.num_extra_tokens)
        if v_level is None:
            box = _box_sum(grid)
            return self.local_scale * join_token_grid(
                torch.zeros_like(extra), box - 9.0 * grid)
        dtype = compute_dtype(grid)
        grid = grid.to(dtype)
        box = _box_sum(torch.sign(grid)) * torch.tensor(
            v_level, dtype=dtype, device=grid.device)
        diff = join_token_grid(torch.zeros_like(extra, dtype=dtype),
                               box - 9.0 * grid)
        return (self.local_scale.detach().to(dtype) * diff).to(v.dtype)


def _box_sum(grid: Tensor) -> Tensor:
    """Sum over each 3x3 neighbourhood (zero padding) of ``(B, C, H, W)``."""
    return F.avg_pool2d(grid, 3, stride=1, padding=1, count_include_pad=True,
                        divisor_override=1)
