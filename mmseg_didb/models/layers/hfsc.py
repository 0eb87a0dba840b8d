"""HFSC: the high-fidelity similarity of DIDB attention.

Paper: Gao et al., "High-Fidelity Differential-information Driven Binary Vision
Transformer" (DIDB-ViT), arXiv 2507.02222, Sec. 3; docs/method.md, section 3.
"""
from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor, nn

from mmseg_didb.binary.compact import binarizers_on, ternary_saves
from mmseg_didb.binary.haar import haar_split
from mmseg_didb.binary.presets import BinaryPreset
from mmseg_didb.binary.quantizers import binary_level
from .tokens import join_token_grid, split_heads, split_token_grid

__all__ = ['HFSCSimilarity', 'UnitFactory', 'act_binarizer', 'sign_dots']

#: ``unit(in_features, out_features, bias)`` -> a binary linear unit that
#: takes ``(tokens, hw)``
UnitFactory = Callable[[int, int, bool], nn.Module]


def act_binarizer(preset: BinaryPreset, channels: int) -> nn.Module:
    """The preset's activation binarizer for tokens (``nn.Identity`` if FP)."""
    q = preset.act_quantizer(channels, channel_dim=-1)
    return nn.Identity() if q is None else q


def sign_dots(q: Tensor, k: Tensor) -> Tensor:
    """``sign(q) sign(k)^T`` of binarized ``(..., N, d)`` queries and keys:
    integers, exact in float32 (0 rows for zero padding)."""
    return torch.sign(q.float()) @ torch.sign(k.float()).transpose(-2, -1)


class HFSCSimilarity(nn.Module):
    """Attention scores from a low- and a high-frequency query/key pair.

    HFSC (DIDB-ViT, arXiv 2507.02222, Sec. 3; docs/method.md, section 3):
    ``X_L`` is the Haar low band of the block input ``X`` at its own scale
    (local 2x2 mean, :func:`~mmseg_didb.binary.haar.haar_split`) and
    ``X_H = X - X_L``, both on the full token map; separate binary units give
    ``Q_L, K_L`` from ``X_L`` and ``Q_H, K_H`` from ``X_H``, and

    ``S = (b_L Q_L K_L^T + b_H Q_H K_H^T) / sqrt(d)``

    with ``b = mix`` learnable per head (init 1) and ``d`` the head dimension.
    ``preset.hfsc='off'`` gives one pair from ``X`` and ``S = Q K^T / sqrt(d)``
    (timm's attention); ``'split'`` (reconstruction) gives each branch half
    of the head dimension, so the cost is that of one ``Q K^T``. Extra (CLS)
    tokens have no grid and enter both branches unchanged.

    Args:
        embed_dims: Channels ``C`` of the block input.
        num_heads: Attention heads.
        preset: The resolved preset (``hfsc``, ``hfsc_low``, binarizers).
        unit: Builds the q/k units (see :data:`UnitFactory`).
        qkv_bias: Bias in the q/k units.
        num_extra_tokens: Leading tokens without a grid position.
    """

    def __init__(self, embed_dims: int, num_heads: int, preset: BinaryPreset,
                 unit: UnitFactory, qkv_bias: bool = True,
                 num_extra_tokens: int = 0) -> None:
        super().__init__()
        head_dims = embed_dims // num_heads
        self.mode = preset.hfsc
        self.low_band = preset.hfsc_low
        self.num_heads = num_heads
        self.num_extra_tokens = num_extra_tokens
        self.scale = head_dims**-0.5
        if self.mode == 'split' and head_dims % 2:
            raise ValueError(
                f"hfsc='split' needs an even head dimension, got {head_dims} "
                f'(embed_dims={embed_dims}, num_heads={num_heads}); use '
                "hfsc='full'")
        self.branches: Tuple[str, ...] = (('', ) if self.mode == 'off' else
                                          ('_low', '_high'))
        self.qk_dims = embed_dims // 2 if self.mode == 'split' else embed_dims
        for br in self.branches:
            self.add_module(f'q{br}', unit(embed_dims, self.qk_dims, qkv_bias))
            self.add_module(f'k{br}', unit(embed_dims, self.qk_dims, qkv_bias))
        # binarizers in front of the binary matmul Q K^T
        for br in self.branches:
            self.add_module(f'q{br}_quant', act_binarizer(preset, self.qk_dims))
            self.add_module(f'k{br}_quant', act_binarizer(preset, self.qk_dims))
        if self.mode != 'off':
            self.mix = nn.Parameter(torch.ones(num_heads, 2))

    def units(self) -> Tuple[List[nn.Module], List[nn.Module]]:
        """The q and the k units, one of each per branch."""
        return ([getattr(self, f'q{br}') for br in self.branches],
                [getattr(self, f'k{br}') for br in self.branches])

    def binarizers(self) -> Tuple[List[nn.Module], List[nn.Module]]:
        """The q and the k binarizers, one of each per branch."""
        return ([getattr(self, f'q{br}_quant') for br in self.branches],
                [getattr(self, f'k{br}_quant') for br in self.branches])

    def binary_scores(self) -> bool:
        """Whether every query and key binarizer is on (``Q K^T`` is then a
        binary matmul and saves its operands compactly)."""
        qs, ks = self.binarizers()
        return binarizers_on(qs + ks)

    def band_split(self, x: Tensor, hw: Tuple[int, int]) -> Tuple[Tensor, ...]:
        """The branch inputs: ``(X_L, X_H)`` on the full map, or ``(X, )``."""
        if self.mode == 'off':
            return (x, )
        extra, grid = split_token_grid(x, hw, self.num_extra_tokens)
        low, high = haar_split(grid, low=self.low_band)
        return join_token_grid(extra, low), join_token_grid(extra, high)

    def project(self, x: Tensor, hw: Tuple[int, int]
                ) -> Tuple[List[Tensor], List[Tensor]]:
        """Binarized queries and keys ``(B, N, qk_dims)`` per branch."""
        inputs = self.band_split(x, hw)
        (q_units, k_units), (q_bin, k_bin) = self.units(), self.binarizers()
        qs = [b(u(xi, hw)) for u, b, xi in zip(q_units, q_bin, inputs)]
        ks = [b(u(xi, hw)) for u, b, xi in zip(k_units, k_bin, inputs)]
        return qs, ks

    def forward(self, qs: List[Tensor], ks: List[Tensor],
                matmuls: Optional[nn.Module] = None,
                exact: bool = False) -> Tensor:
        """Scores ``S`` ``(B, heads, N, N)`` from per-branch ``(B, N, d_qk)``
        queries/keys (of one window each).

        ``matmuls``: the packed products of a deployed model
        (:class:`~mmseg_didb.deploy.attention.PackedAttentionMatmuls`).
        ``exact``: inference on binary queries and keys: the scores of
        :meth:`exact_scores` (float64).
        """
        if exact:
            return self.exact_scores(qs, ks, matmuls)
        scores = None
        binary = self.binary_scores()
        for i, (q, k) in enumerate(zip(qs, ks)):
            q, k = split_heads(q, self.num_heads), split_heads(k, self.num_heads)
            if matmuls is not None:  # deployment: XNOR-popcount kernels
                s = matmuls.similarity(i, q, k) * self.scale
            else:
                with ternary_saves(binary):
                    s = (q * self.scale) @ k.transpose(-2, -1)
            if self.mode != 'off':
                s = s * self.mix[:, i].view(1, -1, 1, 1)
            scores = s if scores is None else scores + s
        return scores

    def exact_scores(self, qs: List[Tensor], ks: List[Tensor],
                     matmuls: Optional[nn.Module] = None) -> Tensor:
        """The scores of inference, float64 from exact integer dots.

        ``S = sum_b ((D_b l_qb l_kb) / sqrt(d)) b_b`` with ``D_b = sign(Q_b)
        sign(K_b)^T`` (integers; XNOR-popcounts in a deployed model) and
        ``l`` the binarizers' levels, each product rounded once in float64,
        in this order. The packed kernels compute the same operations, so
        the probabilities binarized after the softmax agree with them up to
        float64 rounding (docs/method.md, "Exact inference").
        """
        scores = None
        for i, (q, k, qb, kb) in enumerate(zip(qs, ks, *self.binarizers())):
            q, k = split_heads(q, self.num_heads), split_heads(k, self.num_heads)
            dots = sign_dots(q, k) if matmuls is None else matmuls.dots(q, k)
            s = dots.double() * (binary_level(qb) * binary_level(kb))
            s = s * self.scale
            if self.mode != 'off':
                s = s * self.mix[:, i].detach().double().view(1, -1, 1, 1)
            scores = s if scores is None else scores + s
        return scores

    def extra_repr(self) -> str:
        return f'mode={self.mode}, low_band={self.low_band}'
