"""Attention-probability binarizers: BiT {0, a} and BiViT SAB.

Part of :mod:`mmseg_didb.binary.quantizers` (see its docstring for the
conventions: ``kind``, ``enabled``, ``sign(0) = +1``, mixed precision).
"""
from typing import Optional

from torch import Tensor

from .base import AttentionQuantizer, PositiveAlpha
from .functions import _ElasticUnsignedFn, _StraightThrough


#: BinaryViT-Le's start value of the ``{0, a}`` level
_BINARYVIT_PROB_LEVEL = 0.005


def prob_level_init(num_keys: Optional[int] = None,
                    init: Optional[float] = None) -> float:
    """Start value of the ``{0, a}`` probability level ``a``.

    ``a = 1 / N`` for ``N`` keys per query (reconstruction, docs/method.md,
    "Binarizers"): BinaryViT-Le's ``a = 0.005`` is ``~1/197`` for DeiT's 197
    tokens; with a fixed 0.005 every probability of a 49-token Swin window
    exceeds ``a`` and q/k receive no gradient. ``init`` overrides it; with
    neither, 0.005.
    """
    if init is not None:
        return float(init)
    if num_keys is not None:
        if num_keys < 1:
            raise ValueError(f'num_keys must be >= 1, got {num_keys}')
        return 1.0 / num_keys
    return _BINARYVIT_PROB_LEVEL


class ElasticUnsigned(PositiveAlpha, AttentionQuantizer):
    """BiT unsigned elastic binarizer ``alpha*clamp(round(A/alpha), 0, 1)``.

    BiT (Liu et al. NeurIPS 2022, Eq. 6-8, Q_n = 0, Q_p = 1) for attention
    probabilities, values {0, alpha}; ``alpha`` is a learnable scalar per layer,
    kept positive (:class:`PositiveAlpha`).
    Gradients, q = A / alpha: ``grad_A = grad * 1[0 <= q <= 1]``,
    ``grad_alpha = sum(((round(q) - q) 1[0<=q<=1] + 1[q>1]) grad) / sqrt(N)``.

    The start value is :func:`prob_level_init`: ``1 / num_keys``, the mean
    probability of a row, when the number of keys per query is known
    (docs/method.md, "Binarizers"); BinaryViT-Le's 0.005 otherwise.

    Args:
        num_keys: Keys per query ``N`` (window area or token count) at the
            reference size.
        init: Initial alpha; overrides ``num_keys`` (e.g. 0.005 to compare
            with BinaryViT-Le).
    """

    def __init__(self, num_keys: Optional[int] = None,
                 init: Optional[float] = None) -> None:
        super().__init__()
        self._init_alpha(prob_level_init(num_keys, init))

    def quantize(self, a: Tensor) -> Tensor:
        return _ElasticUnsignedFn.apply(a, self.alpha)

    def output_level(self) -> Tensor:
        return self.alpha.detach()


class SAB(AttentionQuantizer):
    """Softmax-aware binarization ``1[A >= ratio * rowmax(A)]`` (BiViT).

    BiViT (He et al. ICCV 2023), SAB: a probability is kept when it is at least
    ``ratio`` times the largest probability of its row (last dim); values
    {0, 1}. Backward straight-through (``grad_A = grad``).

    Args:
        num_keys: Unused (the threshold is relative to the row maximum);
            accepted so that every attention binarizer builds alike.
        ratio: threshold relative to the row maximum, in (0, 1].
    """

    def __init__(self, num_keys: Optional[int] = None,
                 ratio: float = 0.25) -> None:
        super().__init__()
        if not 0 < ratio <= 1:
            raise ValueError(f'SAB ratio must be in (0, 1], got {ratio}')
        self.ratio = ratio

    def quantize(self, a: Tensor) -> Tensor:
        thr = self.ratio * a.detach().amax(dim=-1, keepdim=True)
        return _StraightThrough.apply(a, (a.detach() >= thr).to(a.dtype))

    def extra_repr(self) -> str:
        return f'ratio={self.ratio}, enabled={self.enabled}'
