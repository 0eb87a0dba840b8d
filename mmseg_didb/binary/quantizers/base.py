"""Base classes of the binarizers, the positive learnable scale and the
running input magnitude.

Part of :mod:`mmseg_didb.binary.quantizers` (see its docstring for the
conventions: ``kind``, ``enabled``, ``sign(0) = +1``, mixed precision).
"""
import math
from typing import ClassVar, Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .functions import _EPS


class PositiveAlpha:
    """Mixin: a learnable scalar ``alpha > 0`` stored as ``log_alpha``.

    BiT's scales (``{-a, a}``, ``{0, a}``) must stay positive: a scale at or
    below 0 would flip or erase the binary values. Parametrising by the log
    keeps ``alpha = exp(log_alpha)`` positive under any gradient step; the
    gradient that reaches ``log_alpha`` is ``alpha * grad_alpha`` (BiT's LSQ
    gradient, Eq. 8, times alpha), so optimizer steps are relative changes of
    alpha. Checkpoints that hold ``alpha`` (the earlier parametrisation) load
    into ``log_alpha``. See docs/method.md, "Binarizers".
    """
    log_alpha: nn.Parameter

    def _init_alpha(self, init: float) -> None:
        if not init > 0:
            raise ValueError(f'{type(self).__name__}: alpha must be > 0, got '
                             f'{init}')
        self.log_alpha = nn.Parameter(torch.full((1, ), math.log(init)))

    @property
    def alpha(self) -> Tensor:
        """The positive scale ``exp(log_alpha)``, shape (1,)."""
        return self.log_alpha.exp()

    @torch.no_grad()
    def set_alpha(self, value: float) -> None:
        """Set alpha (> 0) in place."""
        if not value > 0:
            raise ValueError(f'alpha must be > 0, got {value}')
        self.log_alpha.fill_(math.log(value))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        old = state_dict.pop(prefix + 'alpha', None)
        if old is not None and prefix + 'log_alpha' not in state_dict:
            state_dict[prefix + 'log_alpha'] = old.float().clamp_min(
                _EPS).log().reshape(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class RunningMagnitude(nn.Module):
    """Divide an input by a running per-channel magnitude (detached).

    A sign's surrogate gradient is zero for ``|x| > 1``, so an input whose
    typical magnitude is far above 1 (the raw ViT residual stream, sums of
    FP bypasses in the decode head) passes no gradient. Dividing by
    ``m_c``, an exponential moving average of ``mean |x_c|`` over every axis
    but the channel one, puts the input at unit scale. ``m`` is a buffer,
    not a parameter, and it is used in training and inference alike, so the
    binarizer's forward is ``sign(x / m_c + b_c)`` with the same ``m`` in
    both modes (at deployment a constant per-channel threshold). It is
    initialised from the first batch; in training every step updates it,
    averaged over processes under torch.distributed so replicas agree.
    See docs/method.md, "Binary units".

    Args:
        num_channels: channels C.
        channel_dim: channel axis (-1 tokens, 1 maps).
        momentum: EMA weight of the current batch.
    """

    def __init__(self, num_channels: int, channel_dim: int = 1,
                 momentum: float = 0.1) -> None:
        super().__init__()
        if not 0 < momentum <= 1:
            raise ValueError(f'momentum must be in (0, 1], got {momentum}')
        self.num_channels = num_channels
        self.channel_dim = channel_dim
        self.momentum = momentum
        self.register_buffer('magnitude', torch.ones(num_channels))
        self.register_buffer('initialized', torch.zeros((), dtype=torch.uint8))

    @torch.no_grad()
    def _update(self, x: Tensor) -> None:
        dim = self.channel_dim % x.dim()
        red = [d for d in range(x.dim()) if d != dim]
        cur = x.detach().float().abs().mean(dim=red)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(cur)
            cur /= dist.get_world_size()
        cur = cur.clamp_min(_EPS)
        # m = cur on the first batch, the EMA afterwards; selected by a
        # tensor, not a Python branch, so torch.compile needs no graph break
        ema = torch.lerp(self.magnitude, cur, self.momentum)
        self.magnitude.copy_(torch.where(self.initialized.bool(), ema, cur))
        self.initialized.fill_(1)

    def divisor(self, x: Tensor) -> Tensor:
        """``m`` shaped to broadcast against ``x`` (in ``x``'s dtype)."""
        dim = self.channel_dim % x.dim()
        if x.shape[dim] != self.num_channels:
            raise ValueError(
                f'RunningMagnitude: input has {x.shape[dim]} channels on dim '
                f'{self.channel_dim} (shape {tuple(x.shape)}), built for '
                f'{self.num_channels}')
        shape = [1] * x.dim()
        shape[dim] = self.num_channels
        return self.magnitude.to(x.dtype).reshape(shape)

    def forward(self, x: Tensor) -> Tensor:
        # an activation-checkpointing recompute (inside the backward pass)
        # repeats the step's forward: it must see the step's m, not update
        # it a second time
        recompute = (not torch.compiler.is_compiling()
                     and torch._C._current_graph_task_id() != -1)
        if self.training and not recompute:
            self._update(x)
        elif not bool(self.initialized):  # evaluated before any training
            self._update(x)
        return x / self.divisor(x)

    def extra_repr(self) -> str:
        return (f'{self.num_channels}, channel_dim={self.channel_dim}, '
                f'momentum={self.momentum}')


def binary_level(quantizer: nn.Module) -> float:
    """The value of ``+1`` after a binarizer (its :meth:`output_level`, e.g.
    BiT's ``alpha``) as a Python float; 1 for a module without levels."""
    level = getattr(quantizer, 'output_level', None)
    return 1.0 if level is None else float(level().reshape(-1)[0])


class BinaryQuantizer(nn.Module):
    """Base class: ``forward`` is ``quantize(x)`` when enabled, else ``x``.

    Attributes:
        kind: ``'weight'``, ``'activation'`` or ``'attention'`` (used by
            :func:`mmseg_didb.binary.switch.set_binarization`).
        enabled: when False the quantizer is the identity.
    """
    kind: ClassVar[str] = ''

    def __init__(self) -> None:
        super().__init__()
        self.enabled: bool = True

    def quantize(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        if not self.enabled:
            return x
        return self.quantize(x)

    def extra_repr(self) -> str:
        return f'enabled={self.enabled}'


class ActivationQuantizer(BinaryQuantizer):
    """Activation binarizer with optional per-channel parameters.

    Args:
        num_channels: channel count (required by subclasses with per-channel
            parameters and by ``input_scale``).
        channel_dim: axis of the channels: -1 for tokens (B, N, C), 1 for
            feature maps (B, C, H, W).
        input_scale: divide the input by a :class:`RunningMagnitude` before
            the shift and the sign (for inputs that are not normalised).
    """
    kind: ClassVar[str] = 'activation'
    needs_channels: ClassVar[bool] = False

    def __init__(self, num_channels: Optional[int] = None,
                 channel_dim: int = -1, input_scale: bool = False) -> None:
        super().__init__()
        needs = self.needs_channels or input_scale
        if needs and (num_channels is None or num_channels < 1):
            raise ValueError(f'{type(self).__name__} needs num_channels (a '
                             f'positive int), got {num_channels!r}')
        self.num_channels = num_channels
        self.channel_dim = channel_dim
        self.input_scale = (RunningMagnitude(num_channels, channel_dim)
                            if input_scale else None)

    def forward(self, x: Tensor) -> Tensor:
        if not self.enabled:
            return x
        if self.input_scale is not None:
            x = self.input_scale(x)
        return self.quantize(x)

    def output_level(self) -> Tensor:
        """The level ``L`` of the (enabled) outputs ``+-L``: 1 for the sign
        binarizers (used by the layers' compact autograd saves)."""
        return torch.ones(())

    def _per_channel(self, p: Tensor, x: Tensor) -> Tensor:
        """Reshape a (C,) parameter to broadcast against ``x``."""
        dim = self.channel_dim % x.dim()
        if x.shape[dim] != p.numel():
            raise ValueError(
                f'{type(self).__name__}: input has {x.shape[dim]} channels on '
                f'dim {self.channel_dim} (shape {tuple(x.shape)}) but was '
                f'built for {p.numel()}; check num_channels/channel_dim')
        shape = [1] * x.dim()
        shape[dim] = p.numel()
        return p.to(x.dtype).reshape(shape)

    def extra_repr(self) -> str:
        return (f'num_channels={self.num_channels}, channel_dim='
                f'{self.channel_dim}, enabled={self.enabled}')


class WeightQuantizer(BinaryQuantizer):
    """Weight binarizer; rows are dim 0 (output features / output channels).

    Subclasses define :meth:`latent` (the tensor whose sign is taken) and
    :meth:`scale` (the factor a_r, broadcastable to the weight), which are also
    used by the GRS regulariser and the packed export.
    """
    kind: ClassVar[str] = 'weight'

    @staticmethod
    def _row_dims(w: Tensor) -> Tuple[int, ...]:
        return tuple(range(1, w.dim()))

    def latent(self, w: Tensor) -> Tensor:
        """Tensor whose sign gives the binary weight (W or a centred W)."""
        return w

    def scale(self, w: Tensor) -> Tensor:
        """Scale a_r of the binary weight, broadcastable to ``w``."""
        raise NotImplementedError


class AttentionQuantizer(BinaryQuantizer):
    """Binarizer of attention probabilities (softmax outputs)."""
    kind: ClassVar[str] = 'attention'

    def output_level(self) -> Tensor:
        """The nonzero value ``a`` of the (enabled) outputs ``{0, a}``: 1
        unless the binarizer learns it."""
        return torch.ones(())
