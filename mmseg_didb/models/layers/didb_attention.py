"""DIDB attention: HFSC similarity, binarized probabilities, DIBA aggregation.

Shared by the Swin backbone (shifted windows on a token grid) and the ViT
backbone (one global window, optionally with a CLS token). The module always
receives the *full* token map ``(B, N, C)`` with ``N = extra + H*W`` (its
:class:`~mmseg_didb.binary.rprelu.TokenGrid`),
so the Haar split and the 8-neighbour DIBA term see the whole (unshifted,
unpartitioned) map; windows are formed afterwards from q/k/v.

Paper: Gao et al., "High-Fidelity Differential-information Driven Binary Vision
Transformer" (DIDB-ViT), arXiv 2507.02222.
"""
import re
from typing import List, Optional, Tuple, Union

import torch
import torch.nn as nn

from mmseg_didb.binary.compact import binarizers_on
from mmseg_didb.binary.exact import exact_inference
from mmseg_didb.binary.layers import BinaryLinearUnit
from mmseg_didb.binary.presets import BinaryPreset, expect_preset
from mmseg_didb.binary.quantizers import binary_level
from mmseg_didb.binary.rprelu import GridLike, TokenGrid
from .diba import DIBAggregation
from .hfsc import HFSCSimilarity, act_binarizer
from .tokens import (from_windows, merge_heads, split_heads, to_pair,
                     to_windows, window_attention_mask)

__all__ = ['DIDBAttention', 'legacy_attention_key']

# names of the first release, when the parts were attributes of the attention
_LEGACY_NAMES = (
    (re.compile(r'^((q|k)(_low|_high)?(_quant)?)\.'), r'similarity.\1.'),
    (re.compile(r'^hfsc_mix$'), 'similarity.mix'),
    (re.compile(r'^diba_scale$'), 'aggregation.shortcut_scale'),
    (re.compile(r'^diba_local_scale$'), 'aggregation.local_scale'),
)


def legacy_attention_key(name: str) -> str:
    """Today's name of a state-dict entry of :class:`DIDBAttention` saved by
    the first release (``q_low.linear.weight`` -> ``similarity.q_low.linear.
    weight``, ``diba_scale`` -> ``aggregation.shortcut_scale``); other names
    are returned unchanged. ``name`` is relative to the attention."""
    for pattern, repl in _LEGACY_NAMES:
        new, n = pattern.subn(repl, name)
        if n:
            return new
    return name


class DIDBAttention(nn.Module):
    """Binary multi-head self-attention with HFSC, binarized probabilities and DIBA.

    For one head with tokens on an ``H x W`` grid (DIDB-ViT, arXiv 2507.02222,
    Sec. 3; docs/method.md, section 3):

    1. ``S = similarity(X)``: HFSC scores from a low- and a high-frequency
       query/key pair (:class:`~.hfsc.HFSCSimilarity`), ``+ B_rel`` (Swin).
    2. ``A = softmax(S)``, ``Ab = attn_quant(A)`` (BiT elastic ``{0, a}`` by
       default; the binarizer starts ``a`` at ``1 / N`` for ``N`` keys per
       query, :func:`~mmseg_didb.binary.quantizers.prob_level_init`).
    3. ``out = aggregation(Ab, V)``: ``Ab V`` plus the DIBA shortcut and local
       terms (:class:`~.diba.DIBAggregation`), ``V = v_quant(v(X))``.
    4. ``proj``: binary linear unit (norm + shortcut + (Token) RPReLU).

    With ``preset='fp'`` the module computes exactly timm's ``WindowAttention``
    / ``Attention`` (split q/k/v linears instead of a fused ``qkv``).
    Checkpoints of the first release (parts as flat attributes, e.g.
    ``attn.q_low``, ``attn.diba_scale``) load unchanged
    (:func:`legacy_attention_key`).

    Args:
        embed_dims: Channels ``C``.
        num_heads: Attention heads (must divide ``C``).
        preset: The model's resolved :class:`BinaryPreset` (see
            :func:`mmseg_didb.binary.presets.resolve_preset`).
        qkv_bias: Bias in the q/k/v linears.
        attn_drop: Dropout on the attention probabilities (before their
            binarizer, so that ``Ab`` stays in ``{0, a}``).
        proj_drop: Dropout after ``proj``.
        grid: Reference :class:`~mmseg_didb.binary.rprelu.TokenGrid` (the
            pretraining grid and the extra tokens such as a ViT's CLS);
            required when the preset uses static Token RPReLU or the tokens
            hold extra ones.
        attn_tokens: Keys per query ``N`` (window area, or all tokens) at the
            reference size, for the start of ``a``. Default:
            ``grid.num_tokens`` if given.
        prob_scale_init: Start value of ``a`` instead of ``1 / attn_tokens``
            (e.g. BinaryViT-Le's 0.005), for comparing the reconstruction.
        diba_scale_init: Start value of ``l_s`` (DIBA shortcut term).
        diba_local_init: Start value of ``l_l`` (DIBA local term).
    """

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 preset: BinaryPreset,
                 qkv_bias: bool = True,
                 attn_drop: float = 0.,
                 proj_drop: float = 0.,
                 grid: Optional[GridLike] = None,
                 attn_tokens: Optional[int] = None,
                 prob_scale_init: Optional[float] = None,
                 diba_scale_init: float = 1.0,
                 diba_local_init: float = 0.1) -> None:
        super().__init__()
        preset = expect_preset(preset, type(self).__name__)
        if embed_dims % num_heads:
            raise ValueError(f'embed_dims={embed_dims} must be divisible by '
                             f'num_heads={num_heads}')
        self.preset = preset
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.head_dims = embed_dims // num_heads
        self.grid = grid = TokenGrid.of(grid)
        extra = self.num_extra_tokens

        def unit(in_f: int, out_f: int, bias: bool = True) -> nn.Module:
            return BinaryLinearUnit(in_f, out_f, preset, bias=bias, grid=grid)

        self.similarity = HFSCSimilarity(embed_dims, num_heads, preset, unit,
                                         qkv_bias, extra)
        self.v = unit(embed_dims, embed_dims, qkv_bias)
        self.v_quant = act_binarizer(preset, embed_dims)
        if attn_tokens is None and grid is not None:
            attn_tokens = grid.num_tokens
        attn_q = preset.attn_quantizer(attn_tokens, prob_scale_init)
        self.attn_quant = nn.Identity() if attn_q is None else attn_q
        self.attn_drop = nn.Dropout(attn_drop)
        self.aggregation = DIBAggregation(embed_dims, num_heads, preset,
                                          diba_scale_init, diba_local_init,
                                          extra)
        self.proj = unit(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop)
        # set by mmseg_didb.deploy.convert_to_packed: bit-packed Q K^T, Ab V
        self.binary_matmuls: Optional[nn.Module] = None

    @property
    def num_extra_tokens(self) -> int:
        """Leading tokens without a grid position (from ``grid``)."""
        return 0 if self.grid is None else self.grid.num_extra

    @property
    def hfsc(self) -> str:
        """The HFSC mode: ``'off'``, ``'full'`` or ``'split'``."""
        return self.similarity.mode

    @property
    def qk_dims(self) -> int:
        """Channels of every query/key (all heads, one branch)."""
        return self.similarity.qk_dims

    @property
    def scale(self) -> float:
        """``1 / sqrt(d)`` of the scores."""
        return self.similarity.scale

    def matmul_binarizers(self) -> Tuple[List[nn.Module], List[nn.Module],
                                         nn.Module, nn.Module]:
        """The binarizers feeding the two binary matmuls.

        Returns:
            ``(q binarizers, k binarizers, v binarizer, probability
            binarizer)``, one q and one k per HFSC branch; FP parts are
            ``nn.Identity``.
        """
        qs, ks = self.similarity.binarizers()
        return qs, ks, self.v_quant, self.attn_quant

    def exact_inference(self) -> bool:
        """Whether this call decides its attention bits exactly: inference
        (no autograd) of a fully binary attention.

        The binarized probabilities are then computed from exact integer
        dots with a float64 softmax, and ``Ab V`` and the DIBA terms from
        integer counts (:meth:`HFSCSimilarity.exact_scores`,
        :meth:`DIBAggregation.exact_forward`), the arithmetic of the packed
        kernels: a float32 softmax puts probabilities within rounding of the
        ``{0, a}`` threshold often enough at real input sizes that two
        implementations would flip some of them. Training keeps the model's
        dtype (docs/method.md, "Exact inference").
        """
        qs, ks, v_q, a_q = self.matmul_binarizers()
        return exact_inference(qs + ks + [v_q, a_q])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for key in [k for k in state_dict if k.startswith(prefix)]:
            new = prefix + legacy_attention_key(key[len(prefix):])
            if new != key and new not in state_dict:
                state_dict[new] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

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
                :func:`~.tokens.window_partition` (batch outermost), or None.

        Returns:
            ``(Bw, N, C)``: ``Ab V`` plus the DIBA shortcut term.
        """
        N = v.shape[1]
        exact = self.exact_inference()
        scores = self.similarity(qs, ks, self.binary_matmuls, exact)
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
        levels = ((binary_level(self.attn_quant), binary_level(self.v_quant))
                  if exact else None)
        out = self.aggregation(attn, split_heads(v, self.num_heads),
                               self.binary_matmuls,
                               binarizers_on((self.attn_quant, self.v_quant)),
                               levels)
        return merge_heads(out)

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
                partitioned (Swin). Windows need a grid without extra tokens.
            shift_size: Cyclic shift ``(sh, sw)`` (0: no shift).
            rel_pos_bias: ``(num_heads, N_win, N_win)`` bias added to scores.
            attn_mask: Precomputed :func:`~.tokens.window_attention_mask`
                (computed here when None).

        Returns:
            ``(B, E + H*W, C)``.
        """
        hw = to_pair(hw)
        ws = ss = None
        if window_size is not None:
            if self.num_extra_tokens:
                raise ValueError('windowed attention does not support extra '
                                 'tokens; use window_size=None')
            ws, ss = to_pair(window_size), to_pair(shift_size)
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
        qs, ks = self.similarity.project(x, hw)
        v = self.v_quant(self.v(x, hw))
        if window is None:
            out = self.attend(qs, ks, v, rel_pos_bias, attn_mask)
        else:
            win = [to_windows(t, hw, window, shift) for t in qs + ks + [v]]
            n = len(qs)
            out = self.attend(win[:n], win[n:2 * n], win[-1], rel_pos_bias,
                              attn_mask)
            out = from_windows(out, hw, window, shift)
        if self.aggregation.local_scale is not None:
            v_level = (binary_level(self.v_quant) if self.exact_inference()
                       else None)
            out = out + self.aggregation.local_term(v, hw, v_level)
        return out
