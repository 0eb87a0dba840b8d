"""Packed binary attention: ``Q K^T`` and ``Ab V`` on bit-packed operands.

:func:`convert_to_packed` installs one of these as ``binary_matmuls`` of
every binary attention (a module with ``matmul_binarizers()``, e.g.
``DIDBAttention``):

* :class:`PackedAttentionMatmuls`: the two products only. The attention
  keeps its own PyTorch code for the rest (HFSC split, windows, softmax,
  DIBA) and calls :meth:`~PackedAttentionMatmuls.similarity` per HFSC
  branch and :meth:`~PackedAttentionMatmuls.aggregate` instead of its float
  matmuls. Used with the PyTorch kernels, and for attentions the fused core
  does not cover.
* :class:`PackedAttention`: with the C++ kernels, the whole core after the
  q/k/v units in one kernel per layer (``_C.window_attention``): the HFSC
  band split, the binarizers of q, k and v (packed on the fly), windows
  with cyclic shift and padding as index arithmetic, XNOR-popcount scores,
  softmax, the ``{0, a}`` (or SAB) key mask, AND-popcount aggregation and
  both DIBA terms, written back at the tokens (docs/method.md, section 3).
"""
from typing import List, Optional, Sequence, Tuple

from torch import Tensor, nn

from ..binary.quantizers import SAB, ElasticUnsigned, binary_level
from . import kernels
from .kernels import binary_matmul, mask_matmul, pack_signs
from .layers import InputBinarizer, binarizer_on

__all__ = ['PackedAttentionMatmuls', 'PackedAttention', 'packed_attention',
           'window_attention', 'haar_split_tokens']


# --------------------------------------------------------------------------
# the fused core (native only: without the extension the attention runs its
# own PyTorch path with binary_matmul / mask_matmul)
# --------------------------------------------------------------------------
def _need_native(what: str) -> None:
    if not kernels.kernels_available():
        raise RuntimeError(f'{what} needs the C++ kernels (kernels_available() '
                           'is False); the attention modules fall back to '
                           'their PyTorch path without them')


def window_attention(q: Sequence[Tensor], k: Sequence[Tensor], v: Tensor,
                     heads: int, dqk: int, dv: int, h: int, w: int,
                     extra: int, wh: int, ww: int, sh: int, sw: int,
                     qk_scale: Sequence[float], scale: float,
                     mix: Optional[Tensor], bias: Optional[Tensor],
                     mask: Optional[Tensor], prob_mode: int, prob_a: float,
                     prob_ratio: float, av_scale: float, v_mag: float,
                     diba_scale: Optional[Tensor],
                     diba_local_scale: Optional[Tensor]) -> Tensor:
    """The binary (window) attention core on packed token maps.

    ``q``, ``k``: per HFSC branch ``(B, N, Kw)`` packed signs of the
    binarized queries / keys (``dqk`` channels per head, a multiple of 32),
    ``v``: ``(B, N, Kw)`` value signs (``dv`` per head); windows
    ``(wh, ww)`` with cyclic shift ``(sh, sw)`` on the ``h x w`` grid
    (``wh = 0``: one global window, ``extra`` leading tokens), ``bias``
    ``(heads, Nw, Nw)``, ``mask`` ``(windows, Nw, Nw)``. Returns the
    attention output before ``proj``, ``(B, N, heads * dv)`` float32: see
    ``csrc/attention.h`` and docs/method.md (section 3).
    """
    _need_native('window_attention')
    return kernels._C.window_attention(
        list(q), list(k), v, heads, dqk, dv, h, w, extra, wh, ww, sh, sw,
        [float(s) for s in qk_scale], float(scale), mix, bias, mask,
        prob_mode, float(prob_a), float(prob_ratio), float(av_scale),
        float(v_mag), diba_scale, diba_local_scale)


def haar_split_tokens(x: Tensor, h: int, w: int, extra: int = 0,
                      low: int = 0) -> List[Tensor]:
    """HFSC band split of a token map ``(B, extra + h*w, C)``: ``[X_L,
    X_H]`` with ``X_L`` the local 2x2 mean (``low=0``) or the Haar LL
    (``low=1``), the float operations of
    :func:`mmseg_didb.binary.haar_split`; extra tokens go to both."""
    _need_native('haar_split_tokens')
    return list(kernels._C.haar_split_tokens(x, h, w, extra, low))


class PackedAttentionMatmuls(nn.Module):
    """Bit-packed ``Q K^T`` and ``Ab V`` of a binary attention.

    Operands arrive as the binarizers' outputs (``{-m, +m}`` or
    ``{0, a}``), so packing their signs is exact; the magnitudes are folded
    into one output scale.

    Args:
        qk_scales: per branch, the product of the q and k magnitudes, or
            None when ``Q K^T`` is not binary.
        av_scale: ``a`` times the v magnitude, or None when ``Ab V`` is not
            binary.
        prob_value: the nonzero value ``a`` of the binarized probabilities.
    """
    fused = False

    def __init__(self, qk_scales: Optional[List[float]],
                 av_scale: Optional[float], prob_value: float) -> None:
        super().__init__()
        self.qk_scales = qk_scales
        self.av_scale = av_scale
        self.prob_value = prob_value

    def similarity(self, branch: int, q: Tensor, k: Tensor) -> Tensor:
        """``q @ k^T`` for ``(..., N, d)`` sign tensors."""
        if self.qk_scales is None:
            return q @ k.transpose(-2, -1)
        d = q.shape[-1]
        dot = binary_matmul(pack_signs(q), pack_signs(k), d)
        return dot.to(q.dtype) * self.qk_scales[branch]

    @staticmethod
    def dots(q: Tensor, k: Tensor) -> Tensor:
        """Exact integer ``sign(q) sign(k)^T`` (XNOR-popcount) of ``(..., N,
        d)`` binarized queries and keys, float32 (exact inference)."""
        return binary_matmul(pack_signs(q), pack_signs(k),
                             q.shape[-1]).float()

    @staticmethod
    def counts(mask: Tensor, signs: Tensor) -> Tensor:
        """Exact integer ``mask @ signs`` (AND-popcount) of a ``{0, 1}``
        key mask ``(..., N, N)`` and value signs ``(..., N, d)``, float32
        (exact inference)."""
        n = mask.shape[-1]
        # zero-padded keys (signs 0, packed as +1) must count as 0
        mask = mask * signs[..., :1].abs().transpose(-2, -1)
        return mask_matmul(pack_signs(mask - 0.5),
                           pack_signs(signs.transpose(-2, -1)), n).float()

    def aggregate(self, attn: Tensor, v: Tensor) -> Tensor:
        """``attn @ v`` for ``{0, a}`` probabilities and sign values."""
        if self.av_scale is None:
            return attn @ v
        n = attn.shape[-1]
        # Ab is exactly 0 or a: its bit is Ab - a/2 >= 0
        mask = pack_signs(attn - 0.5 * self.prob_value)
        vt = pack_signs(v.transpose(-2, -1))
        return mask_matmul(mask, vt, n).to(v.dtype) * self.av_scale

    def extra_repr(self) -> str:
        return (f'qk={"packed" if self.qk_scales else "fp"}, '
                f'av={"packed" if self.av_scale else "fp"}')


class PackedAttention(PackedAttentionMatmuls):
    """The binary attention core of an attention in one C++ kernel call.

    Built by :func:`packed_attention` when the kernels are native, the
    attention is fully binary (q, k, v and the probabilities) and the head
    dimensions are multiples of 32. The attention calls :meth:`attend`
    with its block input and gets the tokens that enter its ``proj`` unit;
    without the C++ kernels it falls back to its own PyTorch path with the
    inherited packed matmuls.

    Args:
        attn: the attention module (its units, scales and DIBA parameters
            are read at every call, so they are those of the model).
        qk_scales, av_scale, prob_value: see :class:`PackedAttentionMatmuls`.
    """

    def __init__(self, attn: nn.Module, qk_scales: List[float],
                 av_scale: float, prob_value: float) -> None:
        super().__init__(qk_scales, av_scale, prob_value)
        qs, ks, v_q, a_q = attn.matmul_binarizers()
        self.q_bits = nn.ModuleList(InputBinarizer(q) for q in qs)
        self.k_bits = nn.ModuleList(InputBinarizer(k) for k in ks)
        self.v_bits = InputBinarizer(v_q)
        self.v_magnitude = binary_level(v_q)
        self.prob_mode = 1 if isinstance(a_q, SAB) else 0
        self.prob_ratio = float(getattr(a_q, 'ratio', 0.25))

    @property
    def fused(self) -> bool:
        return kernels.kernels_available()

    @staticmethod
    def _words(binarizer: InputBinarizer, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return binarizer.pack_tokens(x).view(b, n, -1)

    def attend(self, attn: nn.Module, x: Tensor, hw: Tuple[int, int],
               window: Optional[Tuple[int, int]],
               shift: Optional[Tuple[int, int]],
               rel_pos_bias: Optional[Tensor],
               attn_mask: Optional[Tensor]) -> Tensor:
        """The attention's output before ``proj`` for block input ``x``
        ``(B, E + H*W, C)`` (window None: one global window)."""
        h, w = hw
        extra = attn.num_extra_tokens
        if attn.hfsc != 'off':
            low = 0 if attn.preset.hfsc_low == 'mean' else 1
            inputs = haar_split_tokens(x, h, w, extra, low)
        else:
            inputs = [x]
        q_units, k_units = attn.similarity.units()
        q = [self._words(b, u(xi, hw))
             for b, u, xi in zip(self.q_bits, q_units, inputs)]
        k = [self._words(b, u(xi, hw))
             for b, u, xi in zip(self.k_bits, k_units, inputs)]
        v = self._words(self.v_bits, attn.v(x, hw))
        heads = attn.num_heads
        wh, ww = window if window is not None else (0, 0)
        sh, sw = shift if shift is not None else (0, 0)
        mix = attn.similarity.mix.detach() if attn.hfsc != 'off' else None
        diba_s, diba_l = (None if p is None else p.detach() for p in (
            attn.aggregation.shortcut_scale, attn.aggregation.local_scale))
        out = window_attention(
            q, k, v, heads, attn.qk_dims // heads, attn.head_dims, h, w,
            extra, wh, ww, sh, sw, self.qk_scales, attn.scale, mix,
            None if rel_pos_bias is None else rel_pos_bias.detach(),
            None if attn_mask is None else attn_mask.detach(),
            self.prob_mode, self.prob_value, self.prob_ratio,
            self.av_scale, self.v_magnitude, diba_s, diba_l)
        return out.to(x.dtype)


def packed_attention(attn: nn.Module) -> Optional[PackedAttentionMatmuls]:
    """The packed products of a binary attention, or None when neither
    ``Q K^T`` nor ``Ab V`` is binary.

    A fully binary attention whose probability binarizer is BiT's ``{0, a}``
    or SAB and whose head dimensions are multiples of 32 gets the fused
    core (:class:`PackedAttention`); others get the two products.
    """
    qs, ks, v_q, a_q = attn.matmul_binarizers()
    qk = None
    if all(binarizer_on(q, 'activation') for q in qs + ks):
        qk = [binary_level(q) * binary_level(k) for q, k in zip(qs, ks)]
    av = None
    prob = binary_level(a_q)
    if binarizer_on(a_q, 'attention') and binarizer_on(v_q, 'activation'):
        av = prob * binary_level(v_q)
    if qk is None and av is None:
        return None
    heads = attn.num_heads
    fusable = (qk is not None and av is not None
               and isinstance(a_q, (ElasticUnsigned, SAB))
               and hasattr(attn, 'similarity')
               and (attn.qk_dims // heads) % 32 == 0
               and attn.head_dims % 32 == 0)
    if fusable:
        return PackedAttention(attn, qk, av, prob)
    return PackedAttentionMatmuls(qk, av, prob)
