"""DIDB attention: HFSC similarity, binarized probabilities and DIBA aggregation.

Shared by the Swin backbone (shifted windows on a token grid) and the ViT
backbone (one global window, optionally with a CLS token). The module always
receives the *full* token map ``(B, N, C)`` with ``N = num_extra_tokens + H*W``,
so the Haar split and the 8-neighbour DIBA term see the whole (unshifted,
unpartitioned) map; windows are formed afterwards from q/k/v.

Paper: Gao et al., "High-Fidelity Differential-information Driven Binary Vision
Transformer" (DIDB-ViT), arXiv 2507.02222.
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmseg_didb.binary.haar import haar_split
from mmseg_didb.binary.layers import BinaryLinearUnit
from mmseg_didb.binary.presets import BinaryPreset, resolve_preset

__all__ = [
    'DIDBAttention', 'window_partition', 'window_reverse',
    'window_attention_mask', 'to_windows', 'from_windows'
]

PresetLike = Union[str, BinaryPreset, dict]
_MASK_VALUE = -100.0  # same finite value as official Swin / timm / mmseg


def _pair(v: Union[int, Sequence[int]]) -> Tuple[int, int]:
    if isinstance(v, int):
        return v, v
    v = tuple(int(i) for i in v)
    if len(v) != 2:
        raise ValueError(f'expected an int or a pair of ints, got {v}')
    return v


def window_partition(x: torch.Tensor,
                     window_size: Tuple[int, int]) -> torch.Tensor:
    """Split ``(B, H, W, C)`` into windows ``(B * nW, wh * ww, C)``.

    ``H`` and ``W`` must be multiples of the window (pad first).
    """
    B, H, W, C = x.shape
    wh, ww = window_size
    x = x.view(B, H // wh, wh, W // ww, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, C)


def window_reverse(windows: torch.Tensor, window_size: Tuple[int, int],
                   H: int, W: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B * nW, wh * ww, C) -> (B, H, W, C)``."""
    wh, ww = window_size
    C = windows.shape[-1]
    x = windows.view(-1, H // wh, W // ww, wh, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


def _padded(hw: Tuple[int, int], window_size: Tuple[int, int]) -> Tuple[int, int]:
    return tuple(-(-s // w) * w for s, w in zip(hw, window_size))


def to_windows(tokens: torch.Tensor, hw: Tuple[int, int],
               window_size: Tuple[int, int],
               shift_size: Tuple[int, int]) -> torch.Tensor:
    """Tokens ``(B, H*W, C)`` -> zero-pad right/bottom -> cyclic shift -> windows.

    Padding happens before the shift, like mmseg's ``ShiftWindowMSA``.
    """
    B, _, C = tokens.shape
    H, W = hw
    Hp, Wp = _padded(hw, window_size)
    x = tokens.view(B, H, W, C)
    if (Hp, Wp) != (H, W):
        x = F.pad(x, (0, 0, 0, Wp - W, 0, Hp - H))
    if any(shift_size):
        x = torch.roll(x, shifts=(-shift_size[0], -shift_size[1]), dims=(1, 2))
    return window_partition(x, window_size)


def from_windows(windows: torch.Tensor, hw: Tuple[int, int],
                 window_size: Tuple[int, int],
                 shift_size: Tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`to_windows`: windows -> ``(B, H*W, C)``."""
    H, W = hw
    Hp, Wp = _padded(hw, window_size)
    x = window_reverse(windows, window_size, Hp, Wp)
    if any(shift_size):
        x = torch.roll(x, shifts=shift_size, dims=(1, 2))
    x = x[:, :H, :W, :]
    return x.reshape(x.shape[0], H * W, -1)


def window_attention_mask(hw: Tuple[int, int], window_size: Tuple[int, int],
                          shift_size: Tuple[int, int],
                          device: Optional[torch.device] = None,
                          dtype: torch.dtype = torch.float32
                          ) -> Optional[torch.Tensor]:
    """Additive attention mask ``(nW, N, N)`` for (shifted) windows, or None.

    Two kinds of pairs are masked with -100 (the value official Swin uses):
    tokens from different regions of a cyclically shifted window (exactly
    official Swin's SW-MSA mask), and keys that are zero padding added to reach
    a multiple of the window. mmseg and timm let queries attend to padding
    tokens; masking them instead makes the output independent of the padding
    and is identical whenever no padding is needed.
    """
    H, W = hw
    Hp, Wp = _padded(hw, window_size)
    if not any(shift_size) and (Hp, Wp) == (H, W):
        return None
    region = torch.zeros((1, Hp, Wp, 1), device=device)
    if any(shift_size):
        cnt = 0
        (wh, ww), (sh, sw) = window_size, shift_size
        h_slices = ((0, -wh), (-wh, -sh), (-sh, None)) if sh else ((0, None), )
        w_slices = ((0, -ww), (-ww, -sw), (-sw, None)) if sw else ((0, None), )
        for h0, h1 in h_slices:
            for w0, w1 in w_slices:
                region[:, h0:h1, w0:w1, :] = cnt
                cnt += 1
    pad = torch.zeros((1, Hp, Wp, 1), device=device)
    pad[:, H:, :, :] = 1
    pad[:, :, W:, :] = 1
    if any(shift_size):
        pad = torch.roll(pad, shifts=(-shift_size[0], -shift_size[1]), dims=(1, 2))
    region = window_partition(region, window_size).squeeze(-1)  # nW, N
    pad = window_partition(pad, window_size).squeeze(-1)
    masked = (region.unsqueeze(1) != region.unsqueeze(2)) | (pad.unsqueeze(1) > 0)
    return masked.to(dtype) * _MASK_VALUE


class DIDBAttention(nn.Module):
    """Binary multi-head self-attention with HFSC, binarized probabilities and DIBA.

    For one head with tokens on an ``H x W`` grid (DIDB-ViT, arXiv 2507.02222,
    Sec. 3; docs/method.md, section 3):

    1. HFSC (high-fidelity similarity): ``X_L`` = the Haar low band at the
       scale of ``X`` (local 2x2 mean, :func:`haar_split`), ``X_H = X - X_L``
       on the full map; separate binary units give
       ``Q_L, K_L`` from ``X_L`` and ``Q_H, K_H`` from ``X_H``, ``V`` from ``X``;
       ``S = (b_L Q_L K_L^T + b_H Q_H K_H^T) / sqrt(d) (+ B_rel)``,
       ``b = hfsc_mix`` learnable per head, init 1.
    2. ``A = softmax(S)``, ``Ab = attn_quant(A)`` (BiT elastic ``{0, a}`` by default).
    3. DIBA: ``out_i = (Ab V)_i + (l_s - k_i) v_i + l_l * sum_{j in N8(i)} (v_j - v_i)``
       with ``k_i = sum_j Ab_ij`` (a popcount times ``a``), ``l_s = diba_scale``
       (per channel, init 1), ``l_l = diba_local_scale`` (per channel, init 0.1),
       N8 the 8 grid neighbours with zero padding; extra tokens get no local term.
    4. ``proj``: binary linear unit (norm + shortcut + (Token) RPReLU).

    Reconstructions (the paper text is not fully available; docs/method.md):
    the exact HFSC/DIBA formulas above; ``hfsc='split'`` gives each branch half
    of the head dimension (same cost as one ``Q K^T``; ``Q_L K_L^T + Q_H K_H^T``
    then equals the full-dimension product when both come from the same
    weights); extra (CLS) tokens have no grid, so both Haar branches see the
    token itself. All three DIBA terms use the binarized ``V`` that enters
    ``Ab V``, so ``(Ab V)_i - k_i v_i = sum_j Ab_ij (v_j - v_i)`` holds exactly.

    With ``preset='fp'`` the module computes exactly timm's ``WindowAttention``
    / ``Attention`` (split q/k/v linears instead of a fused ``qkv``).

    Args:
        embed_dims: Channels ``C``.
        num_heads: Attention heads (must divide ``C``).
        preset: Preset name, :class:`BinaryPreset` or dict (see
            :func:`mmseg_didb.binary.presets.resolve_preset`).
        qkv_bias: Bias in the q/k/v linears.
        attn_drop: Dropout on the attention probabilities (before their
            binarizer, so that ``Ab`` stays in ``{0, a}``).
        proj_drop: Dropout after ``proj``.
        ref_grid: Reference token grid ``(H, W)`` of the per-token RPReLU terms
            (the pretraining grid); required when the preset uses Token RPReLU.
        num_extra_tokens: Leading tokens without a grid position (ViT CLS).
        attn_tokens: Keys per query ``N`` (window area, or all tokens) at the
            reference size. A learnable ``{0, a}`` probability binarizer starts
            at ``a = 1 / N`` (reconstruction: BinaryViT-Le's ``a = 0.005`` is
            ``~1/197`` for DeiT; with a fixed 0.005 every probability of a
            small Swin window exceeds ``a`` and q/k receive no gradient).
            Default: ``num_extra_tokens + H * W`` of ``ref_grid`` if given.
        prob_scale_init: Start value of ``a`` instead of ``1 / attn_tokens``
            (e.g. BinaryViT-Le's 0.005), for comparing the reconstruction.
        diba_scale_init: Start value of ``l_s`` (DIBA shortcut term).
        diba_local_init: Start value of ``l_l`` (DIBA local term).
    """

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 preset: PresetLike = 'didb',
                 qkv_bias: bool = True,
                 attn_drop: float = 0.,
                 proj_drop: float = 0.,
                 ref_grid: Optional[Tuple[int, int]] = None,
                 num_extra_tokens: int = 0,
                 attn_tokens: Optional[int] = None,
                 prob_scale_init: Optional[float] = None,
                 diba_scale_init: float = 1.0,
                 diba_local_init: float = 0.1) -> None:
        super().__init__()
        preset = resolve_preset(preset)
        if embed_dims % num_heads:
            raise ValueError(f'embed_dims={embed_dims} must be divisible by '
                             f'num_heads={num_heads}')
        if preset.token_rprelu == 'static' and ref_grid is None:
            raise ValueError(
                f'preset {preset.name!r} uses static Token RPReLU: pass '
                'ref_grid=(H, W), the token grid the model is pretrained at, '
                "or set token_rprelu='dynamic' / False")
        self.preset = preset
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.head_dims = embed_dims // num_heads
        self.scale = self.head_dims**-0.5
        self.num_extra_tokens = num_extra_tokens
        self.ref_grid = None if ref_grid is None else _pair(ref_grid)
        self.hfsc = preset.hfsc

        def unit(in_f: int, out_f: int, bias: bool = True) -> nn.Module:
            return BinaryLinearUnit(
                in_f, out_f, preset, bias=bias, ref_grid=self.ref_grid,
                num_extra_tokens=num_extra_tokens)

        def act_quant(channels: int) -> nn.Module:
            q = preset.act_quantizer(channels, channel_dim=-1)
            return nn.Identity() if q is None else q

        if self.hfsc == 'off':
            self.branches = ('',)
            self.qk_dims = embed_dims
        else:
            if self.hfsc == 'split' and self.head_dims % 2:
                raise ValueError(
                    f"hfsc='split' needs an even head dimension, got "
                    f'{self.head_dims} (embed_dims={embed_dims}, '
                    f"num_heads={num_heads}); use hfsc='full'")
            self.branches = ('_low', '_high')
            self.qk_dims = embed_dims if self.hfsc == 'full' else embed_dims // 2
        for br in self.branches:
            self.add_module(f'q{br}', unit(embed_dims, self.qk_dims, qkv_bias))
            self.add_module(f'k{br}', unit(embed_dims, self.qk_dims, qkv_bias))
        self.v = unit(embed_dims, embed_dims, qkv_bias)
        # binarizers of q, k, v in front of the binary matmuls Q K^T and Ab V
        for br in self.branches:
            self.add_module(f'q{br}_quant', act_quant(self.qk_dims))
            self.add_module(f'k{br}_quant', act_quant(self.qk_dims))
        self.v_quant = act_quant(embed_dims)
        if self.hfsc != 'off':
            self.hfsc_mix = nn.Parameter(torch.ones(num_heads, 2))

        attn_q = preset.attn_quantizer()
        self.attn_quant = nn.Identity() if attn_q is None else attn_q
        if attn_tokens is None and self.ref_grid is not None:
            attn_tokens = num_extra_tokens + self.ref_grid[0] * self.ref_grid[1]
        if prob_scale_init is None and attn_tokens:
            prob_scale_init = 1.0 / attn_tokens
        if prob_scale_init and hasattr(self.attn_quant, 'set_alpha'):
            self.attn_quant.set_alpha(prob_scale_init)
        self.attn_drop = nn.Dropout(attn_drop)
        if preset.diba_shortcut:
            self.diba_scale = nn.Parameter(
                torch.full((embed_dims, ), float(diba_scale_init)))
        if preset.diba_local:
            self.diba_local_scale = nn.Parameter(
                torch.full((embed_dims, ), float(diba_local_init)))
        self.proj = unit(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop)
        # set by mmseg_didb.deploy.convert_to_packed: bit-packed Q K^T, Ab V
        self.binary_matmuls: Optional[nn.Module] = None

    def matmul_binarizers(self) -> Tuple[List[nn.Module], List[nn.Module],
                                         nn.Module, nn.Module]:
        """The binarizers feeding the two binary matmuls.

        Returns:
            ``(q binarizers, k binarizers, v binarizer, probability
            binarizer)``, one q and one k per HFSC branch; FP parts are
            ``nn.Identity``.
        """
        qs = [getattr(self, f'q{br}_quant') for br in self.branches]
        ks = [getattr(self, f'k{br}_quant') for br in self.branches]
        return qs, ks, self.v_quant, self.attn_quant

    # ------------------------------------------------------------------ grid
    def _split_grid(self, x: torch.Tensor, hw: Tuple[int, int]
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(B, E + H*W, C) -> extra tokens (B, E, C), map (B, C, H, W)."""
        E = self.num_extra_tokens
        B, N, C = x.shape
        H, W = hw
        if N != E + H * W:
            raise ValueError(f'got {N} tokens but hw={hw} and '
                             f'num_extra_tokens={E} need {E + H * W}')
        grid = x[:, E:].transpose(1, 2).reshape(B, C, H, W)
        return x[:, :E], grid

    def _join_grid(self, extra: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        tokens = grid.flatten(2).transpose(1, 2)
        return torch.cat([extra, tokens], 1) if extra.shape[1] else tokens

    def hfsc_split(self, x: torch.Tensor, hw: Tuple[int, int]
                   ) -> Tuple[torch.Tensor, torch.Tensor]:
        """HFSC inputs ``(X_L, X_H)``: Haar low band and residual, full map.

        Extra tokens have no grid and are passed unchanged to both branches.
        """
        extra, grid = self._split_grid(x, hw)
        low, high = haar_split(grid, low=self.preset.hfsc_low)
        return self._join_grid(extra, low), self._join_grid(extra, high)

    def diba_local(self, v: torch.Tensor, hw: Tuple[int, int]) -> torch.Tensor:
        """``sum_{j in N8(i)} (v_j - v_i)`` on the full map, zero padding.

        Equals ``9 * (avg3x3(v) - v)`` (the 3x3 box sum includes ``v_i``).
        Extra tokens get 0.
        """
        extra, grid = self._split_grid(v, hw)
        box = F.avg_pool2d(grid, 3, stride=1, padding=1, count_include_pad=True)
        return self._join_grid(torch.zeros_like(extra), 9.0 * (box - grid))

    # ------------------------------------------------------------- attention
    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        Bw, N, C = t.shape
        return t.view(Bw, N, self.num_heads, C // self.num_heads).transpose(1, 2)

    def attend(self,
               qs: List[torch.Tensor],
               ks: List[torch.Tensor],
               v: torch.Tensor,
               rel_pos_bias: Optional[torch.Tensor] = None,
               attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Attention inside one window (or the whole sequence).

        Args:
            qs, ks: Binarized queries/keys per HFSC branch, each ``(Bw, N, Cqk)``.
            v: Binarized values ``(Bw, N, C)``.
            rel_pos_bias: ``(num_heads, N, N)`` or None.
            attn_mask: ``(nW, N, N)`` additive mask, windows ordered as in
                :func:`window_partition` (batch outermost), or None.

        Returns:
            ``(Bw, N, C)``: ``Ab V`` plus the DIBA shortcut term.
        """
        Bw, N, C = v.shape
        packed = self.binary_matmuls
        scores = None
        for i, (q, k) in enumerate(zip(qs, ks)):
            if packed is not None:  # deployment: XNOR-popcount kernels
                s = packed.similarity(i, self._heads(q), self._heads(k))
                s = s * self.scale
            else:
                s = (self._heads(q) * self.scale) @ self._heads(k).transpose(
                    -2, -1)
            if self.hfsc != 'off':
                s = s * self.hfsc_mix[:, i].view(1, -1, 1, 1)
            scores = s if scores is None else scores + s
        if rel_pos_bias is not None:
            scores = scores + rel_pos_bias.unsqueeze(0)
        if attn_mask is not None:
            nW = attn_mask.shape[0]
            scores = scores.view(-1, nW, self.num_heads, N, N) + \
                attn_mask.view(1, nW, 1, N, N)
            scores = scores.view(-1, self.num_heads, N, N)
        attn = scores.softmax(dim=-1)
        # dropout first, so that Ab keeps its values {0, a}
        attn = self.attn_quant(self.attn_drop(attn))
        vh = self._heads(v)
        out = attn @ vh if packed is None else packed.aggregate(attn, vh)
        if self.preset.diba_shortcut:
            # (l_s - k_i) v_i with k_i the row sum (popcount * a) of Ab
            row_sum = attn.sum(dim=-1, keepdim=True)
            l_s = self.diba_scale.view(1, self.num_heads, 1, self.head_dims)
            out = out + (l_s - row_sum) * vh
        return out.transpose(1, 2).reshape(Bw, N, C)

    def qk_units(self) -> Tuple[List[nn.Module], List[nn.Module]]:
        """The q and the k units, one of each per HFSC branch."""
        return ([getattr(self, f'q{br}') for br in self.branches],
                [getattr(self, f'k{br}') for br in self.branches])

    def forward(self,
                x: torch.Tensor,
                hw: Tuple[int, int],
                window_size: Optional[Union[int, Tuple[int, int]]] = None,
                shift_size: Union[int, Tuple[int, int]] = 0,
                rel_pos_bias: Optional[torch.Tensor] = None,
                attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Attend over the full token map.

        Args:
            x: ``(B, E + H*W, C)`` normalised block input.
            hw: Grid ``(H, W)`` of the spatial tokens.
            window_size: None for one global window (ViT); else the (clamped)
                window ``(wh, ww)``; the map is zero-padded to a multiple of it
                (right/bottom), cyclically shifted by ``shift_size`` and
                partitioned (Swin). Windows need ``num_extra_tokens == 0``.
            shift_size: Cyclic shift ``(sh, sw)`` (0: no shift).
            rel_pos_bias: ``(num_heads, N_win, N_win)`` bias added to scores.
            attn_mask: Precomputed :func:`window_attention_mask` (computed here
                when None).

        Returns:
            ``(B, E + H*W, C)``.
        """
        hw = _pair(hw)
        ws = ss = None
        if window_size is not None:
            if self.num_extra_tokens:
                raise ValueError('windowed attention does not support extra '
                                 'tokens; use window_size=None')
            ws, ss = _pair(window_size), _pair(shift_size)
            if attn_mask is None:
                attn_mask = window_attention_mask(hw, ws, ss, x.device,
                                                  x.dtype)
        packed = self.binary_matmuls
        if packed is not None and packed.fused:
            # deployment: the core after the units in one packed kernel
            out = packed.attend(self, x, hw, ws, ss, rel_pos_bias, attn_mask)
        else:
            out = self._core(x, hw, ws, ss, rel_pos_bias, attn_mask)
        return self.proj_drop(self.proj(out, hw))

    def _core(self, x: torch.Tensor, hw: Tuple[int, int],
              window: Optional[Tuple[int, int]],
              shift: Optional[Tuple[int, int]],
              rel_pos_bias: Optional[torch.Tensor],
              attn_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """HFSC, q/k/v, (windowed) attention and DIBA: the input of
        ``proj``."""
        if self.hfsc != 'off':
            inputs = self.hfsc_split(x, hw)
        else:
            inputs = (x, )
        q_units, k_units = self.qk_units()
        q_quants, k_quants, v_quant, _ = self.matmul_binarizers()
        qs = [quant(unit(xi, hw))
              for unit, quant, xi in zip(q_units, q_quants, inputs)]
        ks = [quant(unit(xi, hw))
              for unit, quant, xi in zip(k_units, k_quants, inputs)]
        v = v_quant(self.v(x, hw))

        if window is None:
            out = self.attend(qs, ks, v, rel_pos_bias, attn_mask)
        else:
            win = [to_windows(t, hw, window, shift) for t in qs + ks + [v]]
            n = len(qs)
            out = self.attend(win[:n], win[n:2 * n], win[-1], rel_pos_bias,
                              attn_mask)
            out = from_windows(out, hw, window, shift)
        if self.preset.diba_local:
            out = out + self.diba_local_scale * self.diba_local(v, hw)
        return out
