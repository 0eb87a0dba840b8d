"""Activation binarizers: BNN, Bi-Real, ReActNet, BiT elastic, BinaryViT ASM.

Part of :mod:`mmseg_didb.binary.quantizers` (see its docstring for the
conventions: ``kind``, ``enabled``, ``sign(0) = +1``, mixed precision).
"""
import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..exact import mean_exact
from .base import ActivationQuantizer, PositiveAlpha
from .functions import _EPS, _ElasticSignFn, _SignApprox, _SignClippedSTE


class SignSTE(ActivationQuantizer):
    """sign(x) with the clipped straight-through estimator.

    Forward ``sign(x)`` in {-1, +1}; backward ``grad * 1[|x| <= 1]``
    (BNN, Hubara et al. NeurIPS 2016, Eq. 4).
    """

    def quantize(self, x: Tensor) -> Tensor:
        return _SignClippedSTE.apply(x)


class ApproxSign(ActivationQuantizer):
    """sign(x) with the Bi-Real ApproxSign backward.

    Forward ``sign(x)``; backward ``grad * (2 - 2|x|)`` on ``|x| <= 1``, else 0
    (Bi-Real Net, Liu et al. ECCV 2018, Eq. 5).
    """

    def quantize(self, x: Tensor) -> Tensor:
        return _SignApprox.apply(x)


class RSign(ActivationQuantizer):
    """ReAct-Sign: ``sign(x + b_c)``, learnable per-channel shift, init 0.

    ReActNet (Liu et al. ECCV 2020), Eq. 3 (written there as x - alpha_c);
    backward of the sign is ApproxSign (Bi-Real, Eq. 5).

    Args:
        num_channels: number of channels C.
        channel_dim: channel axis (-1 tokens, 1 maps).
        input_scale: see :class:`ActivationQuantizer`.
    """
    needs_channels = True

    def __init__(self, num_channels: int, channel_dim: int = -1,
                 input_scale: bool = False) -> None:
        super().__init__(num_channels, channel_dim, input_scale)
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def quantize(self, x: Tensor) -> Tensor:
        return _SignApprox.apply(x + self._per_channel(self.bias, x))


class ElasticSign(PositiveAlpha, ActivationQuantizer):
    """BiT elastic signed binarizer: ``alpha * sign(x + b_c)``.

    BiT (Liu et al. NeurIPS 2022), Eq. 6-8: ``alpha`` is one learnable scalar
    per layer, initialised lazily on the first enabled call to
    ``2 * mean|x + b|`` (BiT's ``AlphaInit`` for 1 bit); ``b_c`` is a learnable
    per-channel shift (init 0). With x' = x + b the gradients are
    ``grad_x = grad * 1[|x'/alpha| <= 1]`` and the LSQ gradient
    ``grad_alpha = sum(sign(x') * grad) / sqrt(N)``. Output values are
    {-alpha, +alpha}; alpha is kept positive (:class:`PositiveAlpha`).
    """
    needs_channels = True

    def __init__(self, num_channels: int, channel_dim: int = -1,
                 input_scale: bool = False) -> None:
        super().__init__(num_channels, channel_dim, input_scale)
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self._init_alpha(1.0)
        # a buffer (not a Python flag) so a loaded checkpoint is not re-inited
        self.register_buffer('initialized', torch.zeros((), dtype=torch.uint8))

    @torch.no_grad()
    def _lazy_init(self, x: Tensor) -> None:
        init = 2 * x.detach().float().abs().mean()
        # data-dependent: average over processes so DDP replicas stay equal
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(init)
            init /= dist.get_world_size()
        self.set_alpha(max(init.item(), _EPS))
        self.initialized.fill_(1)

    def quantize(self, x: Tensor) -> Tensor:
        x = x + self._per_channel(self.bias, x)
        if not bool(self.initialized):
            self._lazy_init(x)
        return _ElasticSignFn.apply(x, self.alpha)

    def output_level(self) -> Tensor:
        return self.alpha.detach()


class ASMSign(ActivationQuantizer):
    """Activation shift module + sign (BinaryViT, Xiao et al. 2023).

    ``x' = x - (b_c + k_c * mean_tokens(x))`` then ``sign(x')`` with ApproxSign
    backward. The mean runs over every axis except the batch (0) and the
    channel axis: tokens for (B, N, C), H and W for (B, C, H, W).

    Reconstruction: Xiao et al. describe ASM as a static plus dynamic
    per-channel shift but publish no formula; this form follows BiDense's DAB
    shift. ``b`` and ``k`` start at 0 (so it starts as RSign); the statistic is
    detached by default (as in BiDense), ``detach_stats=False`` lets gradients
    flow through the mean.
    """
    needs_channels = True

    def __init__(self, num_channels: int, channel_dim: int = -1,
                 input_scale: bool = False, detach_stats: bool = True) -> None:
        super().__init__(num_channels, channel_dim, input_scale)
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.k = nn.Parameter(torch.zeros(num_channels))
        self.detach_stats = detach_stats

    def shift(self, x: Tensor) -> Tensor:
        """The per-sample, per-channel shift b_c + k_c * mean_tokens(x)."""
        dim = self.channel_dim % x.dim()
        red = [d for d in range(1, x.dim()) if d != dim]
        mean = mean_exact(x, red, keepdim=True) if red else x
        if self.detach_stats:
            mean = mean.detach()
        return self._per_channel(self.bias, x) + self._per_channel(
            self.k, x) * mean

    def quantize(self, x: Tensor) -> Tensor:
        return _SignApprox.apply(x - self.shift(x))
