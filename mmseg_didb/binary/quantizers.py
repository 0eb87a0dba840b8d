"""1-bit quantizers for weights, activations and attention probabilities.

Every quantizer is an :class:`torch.nn.Module` with a class attribute ``kind``
(``'weight'``, ``'activation'`` or ``'attention'``) and an instance flag
``enabled``. A disabled quantizer returns its input unchanged, so a layer whose
quantizers are all disabled is exactly its floating-point counterpart
(two-stage training, FP-equivalence tests; see
:mod:`mmseg_didb.binary.switch`).

Each equation lives in one place here:

* Activations: :class:`SignSTE` (BNN, Hubara et al. 2016, clipped STE),
  :class:`ApproxSign` (Bi-Real Net, Liu et al. ECCV 2018, Eq. 5),
  :class:`RSign` (ReActNet, Liu et al. ECCV 2020, Eq. 3),
  :class:`ElasticSign` (BiT, Liu et al. NeurIPS 2022, elastic binarization,
  Eq. 6-8) and :class:`ASMSign` (BinaryViT, Xiao et al. 2023, activation shift
  module; *reconstruction*, the formula is not public).
* Weights: :class:`SignWeight` (ReActNet / Bi-Real per-output-channel scale),
  :class:`ReActWeight` (BinaryViT, Le & Li CVPRW 2023, row-centred),
  :class:`BWNWeight` (BiT, per-tensor binary-weight network) and
  :class:`PWSWeight` (BiViT, He et al. ICCV 2023, learnable per-row scale).
* Attention probabilities: :class:`ElasticUnsigned` (BiT, {0, alpha} with an
  LSQ gradient for alpha) and :class:`SAB` (BiViT softmax-aware binarization).

``sign(0)`` is ``+1`` everywhere, so binary tensors never contain 0.

Mixed precision: inputs keep their dtype (learnable shifts and scales are cast
to the input dtype), while reductions that feed a gradient of a scalar
parameter (LSQ sums) are accumulated in float32.
"""
import math
from typing import Callable, ClassVar, Dict, Optional, Tuple, Type

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = [
    'PositiveAlpha', 'RunningMagnitude', 'BinaryQuantizer', 'ActivationQuantizer', 'WeightQuantizer',
    'AttentionQuantizer', 'sign', 'SignSTE', 'ApproxSign', 'RSign',
    'ElasticSign', 'ASMSign', 'SignWeight', 'ReActWeight', 'BWNWeight',
    'PWSWeight', 'ElasticUnsigned', 'SAB', 'WEIGHT_QUANTIZERS',
    'ACT_QUANTIZERS', 'ATTN_QUANTIZERS', 'build_weight_quantizer',
    'build_act_quantizer', 'build_attn_quantizer'
]

_EPS = 1e-5  # smallest initial value of a learnable scale


def sign(x: Tensor) -> Tensor:
    """Sign with ``sign(0) = +1``: values {-1, +1} in the dtype of ``x``.

    Computed as ``copysign(1, x + 0)``: adding +0 turns -0 into +0, so every
    ``x >= 0`` gives +1 exactly as ``where(x >= 0, 1, -1)`` would, without
    the boolean intermediate (several times faster on CPU).
    """
    one = torch.ones((), dtype=x.dtype, device=x.device)
    return torch.copysign(one, x + 0)


# --------------------------------------------------------------------------
# autograd functions (forward: exact binary values; backward: surrogate)
# --------------------------------------------------------------------------
class _SignFn(torch.autograd.Function):
    """sign(x) forward, saving x; subclasses define the surrogate backward."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return sign(x)


class _SignClippedSTE(torch.autograd.Function):
    """sign(x); backward grad * 1[|x| <= 1] (BNN clipped straight-through).

    Saves the window ``|x| <= 1`` as a boolean mask, not ``x``.
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x.abs() <= 1)
        return sign(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        window, = ctx.saved_tensors
        return grad * window.to(grad.dtype)


class _SignApprox(_SignFn):
    """sign(x); backward grad * (2 - 2|x|) on |x| <= 1, else 0 (Bi-Real Eq. 5).

    This is the derivative of the piecewise polynomial ApproxSign
    (2x + x^2 on [-1, 0), 2x - x^2 on [0, 1], +-1 outside).
    """

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        x, = ctx.saved_tensors
        return grad * (2 - 2 * x.abs()).clamp_min(0).to(grad.dtype)


class _ElasticSignFn(torch.autograd.Function):
    """BiT signed elastic binarizer: alpha * sign(x) with LSQ gradients.

    grad_x = grad * 1[|x / alpha| <= 1];
    grad_alpha = sum(sign(x) * grad) / sqrt(N), N = x.numel()
    (BiT NeurIPS 2022, Eq. 8; LSQ gradient scale with Q_p = 1).
    Saves the window and the sign as boolean masks, not ``x``.
    """

    @staticmethod
    def forward(ctx, x: Tensor, alpha: Tensor) -> Tensor:
        window = (x.float() / alpha).abs() <= 1
        ctx.save_for_backward(window, x >= 0, alpha)
        return sign(x) * alpha.to(x.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tuple[Tensor, Tensor]:
        window, positive, alpha = ctx.saved_tensors
        grad_x = grad * window.to(grad.dtype)
        signs = torch.where(positive, 1.0, -1.0)
        grad_alpha = (signs * grad.float()).sum() / math.sqrt(window.numel())
        return grad_x, grad_alpha.reshape(alpha.shape).to(alpha.dtype)


class _ElasticUnsignedFn(torch.autograd.Function):
    """BiT unsigned elastic binarizer: alpha * clamp(round(A / alpha), 0, 1).

    With q = A / alpha: grad_A = grad * 1[0 <= q <= 1];
    grad_alpha = sum(((round(q) - q) * 1[0 <= q <= 1] + 1[q > 1]) * grad)
    / sqrt(N) (BiT Eq. 8 with Q_n = 0, Q_p = 1; LSQ, Esser et al. ICLR 2020).
    """

    @staticmethod
    def forward(ctx, a: Tensor, alpha: Tensor) -> Tensor:
        ctx.save_for_backward(a, alpha)
        q = a.float() / alpha
        return (q.round().clamp(0, 1) * alpha).to(a.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tuple[Tensor, Tensor]:
        a, alpha = ctx.saved_tensors
        q = a.float() / alpha
        mid = ((q >= 0) & (q <= 1)).float()
        big = (q > 1).float()
        grad_a = grad * mid.to(grad.dtype)
        grad_alpha = (((q.round() - q) * mid + big) * grad.float()).sum()
        grad_alpha = grad_alpha / math.sqrt(a.numel())
        return grad_a, grad_alpha.reshape(alpha.shape).to(alpha.dtype)


class _ScaledSignSTE(torch.autograd.Function):
    """scale * sign(w); straight-through backward for weights.

    grad_w = grad * 1[|w| <= clip] (identity when ``clip`` is None);
    grad_scale = sum over broadcast dims of grad * sign(w) (only used when the
    scale is learnable, BiViT PWS). Saves boolean masks (the window, and the
    sign when the scale is learnable), not the latent weight.
    """

    @staticmethod
    def forward(ctx, w: Tensor, scale: Tensor,
                clip: Optional[float]) -> Tensor:
        window = None if clip is None else w.abs() <= clip
        positive = w >= 0 if ctx.needs_input_grad[1] else None
        ctx.save_for_backward(window, positive)
        ctx.scale_shape, ctx.scale_dtype = scale.shape, scale.dtype
        return sign(w) * scale.to(w.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor):
        window, positive = ctx.saved_tensors
        grad_w = grad if window is None else grad * window.to(grad.dtype)
        grad_scale = None
        if ctx.needs_input_grad[1]:
            signs = torch.where(positive, 1.0, -1.0).to(grad.dtype)
            grad_scale = (signs * grad).float().sum_to_size(
                ctx.scale_shape).to(ctx.scale_dtype)
        return grad_w, grad_scale, None


class _StraightThrough(torch.autograd.Function):
    """Forward a given (binary) tensor, backward the identity to ``x``."""

    @staticmethod
    def forward(ctx, x: Tensor, value: Tensor) -> Tensor:
        return value

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


# --------------------------------------------------------------------------
# positive learnable scale, running input magnitude
# --------------------------------------------------------------------------
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
        if not bool(self.initialized):
            self.magnitude.copy_(cur)
            self.initialized.fill_(1)
        else:
            self.magnitude.lerp_(cur, self.momentum)

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
        recompute = torch._C._current_graph_task_id() != -1
        if (self.training and not recompute) or not bool(self.initialized):
            self._update(x)
        return x / self.divisor(x)

    def extra_repr(self) -> str:
        return (f'{self.num_channels}, channel_dim={self.channel_dim}, '
                f'momentum={self.momentum}')


# --------------------------------------------------------------------------
# base classes
# --------------------------------------------------------------------------
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


# --------------------------------------------------------------------------
# activation binarizers
# --------------------------------------------------------------------------
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
        mean = x.mean(dim=red, keepdim=True) if red else x
        if self.detach_stats:
            mean = mean.detach()
        return self._per_channel(self.bias, x) + self._per_channel(
            self.k, x) * mean

    def quantize(self, x: Tensor) -> Tensor:
        return _SignApprox.apply(x - self.shift(x))


# --------------------------------------------------------------------------
# weight binarizers
# --------------------------------------------------------------------------
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


# --------------------------------------------------------------------------
# attention-probability binarizers
# --------------------------------------------------------------------------
class ElasticUnsigned(PositiveAlpha, AttentionQuantizer):
    """BiT unsigned elastic binarizer ``alpha*clamp(round(A/alpha), 0, 1)``.

    BiT (Liu et al. NeurIPS 2022, Eq. 6-8, Q_n = 0, Q_p = 1) for attention
    probabilities, values {0, alpha}; ``alpha`` is a learnable scalar per layer
    (init 0.005 as in BinaryViT-Le), kept positive (:class:`PositiveAlpha`).
    Gradients, q = A / alpha: ``grad_A = grad * 1[0 <= q <= 1]``,
    ``grad_alpha = sum(((round(q) - q) 1[0<=q<=1] + 1[q>1]) grad) / sqrt(N)``.

    Args:
        init: initial alpha.
    """

    def __init__(self, init: float = 0.005) -> None:
        super().__init__()
        self._init_alpha(float(init))

    def quantize(self, a: Tensor) -> Tensor:
        return _ElasticUnsignedFn.apply(a, self.alpha)


class SAB(AttentionQuantizer):
    """Softmax-aware binarization ``1[A >= ratio * rowmax(A)]`` (BiViT).

    BiViT (He et al. ICCV 2023), SAB: a probability is kept when it is at least
    ``ratio`` times the largest probability of its row (last dim); values
    {0, 1}. Backward straight-through (``grad_A = grad``).

    Args:
        ratio: threshold relative to the row maximum, in (0, 1].
    """

    def __init__(self, ratio: float = 0.25) -> None:
        super().__init__()
        if not 0 < ratio <= 1:
            raise ValueError(f'SAB ratio must be in (0, 1], got {ratio}')
        self.ratio = ratio

    def quantize(self, a: Tensor) -> Tensor:
        thr = self.ratio * a.detach().amax(dim=-1, keepdim=True)
        return _StraightThrough.apply(a, (a.detach() >= thr).to(a.dtype))

    def extra_repr(self) -> str:
        return f'ratio={self.ratio}, enabled={self.enabled}'


# --------------------------------------------------------------------------
# name -> class tables (used by presets and by string arguments of layers)
# --------------------------------------------------------------------------
WEIGHT_QUANTIZERS: Dict[str, Type[WeightQuantizer]] = {
    'sign': SignWeight,
    'react': ReActWeight,
    'bwn': BWNWeight,
    'pws': PWSWeight,
}
ACT_QUANTIZERS: Dict[str, Type[ActivationQuantizer]] = {
    'ste': SignSTE,
    'approx': ApproxSign,
    'rsign': RSign,
    'elastic': ElasticSign,
    'asm': ASMSign,
}
ATTN_QUANTIZERS: Dict[str, Type[AttentionQuantizer]] = {
    'elastic': ElasticUnsigned,
    'sab': SAB,
}


def _check_name(name: str, table: Dict[str, Callable], what: str) -> None:
    if name != 'fp' and name not in table:
        raise ValueError(f'unknown {what} quantizer {name!r}; valid: '
                         f"{['fp'] + sorted(table)}")


def build_weight_quantizer(name: str,
                           out_channels: Optional[int] = None
                           ) -> Optional[WeightQuantizer]:
    """Weight quantizer by name (``'fp'`` gives None)."""
    _check_name(name, WEIGHT_QUANTIZERS, 'weight')
    if name == 'fp':
        return None
    if name == 'pws':
        return PWSWeight(out_channels)
    return WEIGHT_QUANTIZERS[name]()


def build_act_quantizer(
        name: str,
        num_channels: Optional[int] = None,
        channel_dim: int = -1,
        input_scale: bool = False) -> Optional[ActivationQuantizer]:
    """Activation quantizer by name (``'fp'`` gives None).

    ``input_scale`` divides the input by a :class:`RunningMagnitude` first.
    """
    _check_name(name, ACT_QUANTIZERS, 'activation')
    if name == 'fp':
        return None
    return ACT_QUANTIZERS[name](num_channels, channel_dim,
                                input_scale=input_scale)


def build_attn_quantizer(name: str) -> Optional[AttentionQuantizer]:
    """Attention-probability quantizer by name (``'fp'`` gives None)."""
    _check_name(name, ATTN_QUANTIZERS, 'attention')
    if name == 'fp':
        return None
    return ATTN_QUANTIZERS[name]()
