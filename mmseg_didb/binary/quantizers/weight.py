"""Weight binarizers: sign, ReActNet / BinaryViT, BWN, PWS.

Part of :mod:`mmseg_didb.binary.quantizers` (see its docstring for the
conventions: ``kind``, ``enabled``, ``sign(0) = +1``, mixed precision).
"""
from typing import Optional

import torch
from torch import Tensor, nn

from .base import WeightQuantizer
from .functions import _ScaledSignSTE


class SignWeight(WeightQuantizer):
    """``a_r * sign(W)``, a_r = mean|W| over all dims but 0 (detached).

    Backward: straight-through via ``clamp(W, -1, 1)``, i.e.
    ``grad_W = grad * 1[|W| <= 1]`` (ReActNet / Bi-Real official code; XNOR-Net
    scale, Rastegari et al. ECCV 2016, Eq. 4).
    """

    def scale(self, w: Tensor) -> Tensor:
        return w.detach().abs().mean(dim=self._row_dims(w), keepdim=True)

    def quantize(self, w: Tensor) -> Tensor:
        return _ScaledSignSTE.apply(w, self.scale(w), 1.0)


class ReActWeight(WeightQuantizer):
    """Row-centred weight binarizer ("react-centered", the default).

    ``Wc = W - rowmean(W)``; ``Wb = a_r * sign(Wc)`` with
    ``a_r = rowmean(|W|)`` of the *un-centred* W, detached; backward
    straight-through via ``clamp(Wc, -1, 1)``, and through the (differentiable)
    centring: ``grad_W = m - rowmean(m)``, ``m = grad * 1[|Wc| <= 1]``
    (BinaryViT, Le & Li CVPRW 2023, ``QuantizeLinear``).

    Args:
        center: subtract the row mean before the sign (False gives
            :class:`SignWeight`).
    """

    def __init__(self, center: bool = True) -> None:
        super().__init__()
        self.center = center

    def latent(self, w: Tensor) -> Tensor:
        if not self.center:
            return w
        return w - w.mean(dim=self._row_dims(w), keepdim=True)

    def scale(self, w: Tensor) -> Tensor:
        return w.detach().abs().mean(dim=self._row_dims(w), keepdim=True)

    def quantize(self, w: Tensor) -> Tensor:
        return _ScaledSignSTE.apply(self.latent(w), self.scale(w), 1.0)

    def extra_repr(self) -> str:
        return f'center={self.center}, enabled={self.enabled}'


class BWNWeight(WeightQuantizer):
    """Per-tensor binary-weight network: ``mean|W| * sign(W - mean(W))``.

    BiT (Liu et al. NeurIPS 2022) ``BwnQuantizer``: one scale per tensor from
    the un-centred weight; identity straight-through backward
    (``grad_W = grad``).
    """

    def latent(self, w: Tensor) -> Tensor:
        return w - w.mean()

    def scale(self, w: Tensor) -> Tensor:
        return w.detach().abs().mean().reshape([1] * w.dim())

    def quantize(self, w: Tensor) -> Tensor:
        return _ScaledSignSTE.apply(self.latent(w).detach() + (w - w.detach()),
                                    self.scale(w), None)


class PWSWeight(WeightQuantizer):
    """Learnable per-row scale: ``alpha_r * sign(W - rowmean(W))`` (BiViT PWS).

    BiViT (He et al. ICCV 2023): ``alpha`` (one per output row) is a parameter,
    initialised to ``rowmean(|W|)`` on the first enabled call. Gradients:
    ``grad_alpha_r = sum_row(grad * sign(Wc))``; W gets the straight-through
    gradient via ``clamp(Wc, -1, 1)`` as in :class:`ReActWeight`.

    Args:
        out_channels: number of rows. May be None when the quantizer is handed
            to :class:`BinaryLinear` / :class:`BinaryConv2d`, which call
            :meth:`setup` with their weight.
    """

    def __init__(self, out_channels: Optional[int] = None) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.register_parameter('alpha', None)
        if out_channels is not None:
            self.alpha = nn.Parameter(torch.ones(out_channels))
        self.register_buffer('initialized', torch.zeros((), dtype=torch.uint8))

    def setup(self, weight: Tensor) -> None:
        """Create ``alpha`` for ``weight`` (called by the binary layers)."""
        rows = weight.shape[0]
        if self.alpha is None:
            self.out_channels = rows
            self.alpha = nn.Parameter(
                torch.ones(rows, device=weight.device, dtype=weight.dtype))
        elif self.alpha.numel() != rows:
            raise ValueError(f'PWSWeight built for {self.alpha.numel()} rows '
                             f'but the weight has {rows}')

    def latent(self, w: Tensor) -> Tensor:
        return w - w.mean(dim=self._row_dims(w), keepdim=True)

    def scale(self, w: Tensor) -> Tensor:
        if self.alpha is None:
            raise RuntimeError('PWSWeight has no alpha: pass out_channels or '
                               'use it inside BinaryLinear/BinaryConv2d')
        return self.alpha.reshape([-1] + [1] * (w.dim() - 1))

    def quantize(self, w: Tensor) -> Tensor:
        if not bool(self.initialized) and self.alpha is not None:
            with torch.no_grad():
                self.alpha.copy_(w.detach().abs().mean(
                    dim=self._row_dims(w)).to(self.alpha.dtype))
                self.initialized.fill_(1)
        return _ScaledSignSTE.apply(self.latent(w), self.scale(w), 1.0)

    def extra_repr(self) -> str:
        return f'out_channels={self.out_channels}, enabled={self.enabled}'
