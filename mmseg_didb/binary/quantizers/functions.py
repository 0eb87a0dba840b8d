"""Autograd functions of the binarizers: forward values and the gradients
they pass back, saving only what the backward needs (boolean masks, not
float copies).

Part of :mod:`mmseg_didb.binary.quantizers` (see its docstring for the
conventions: ``kind``, ``enabled``, ``sign(0) = +1``, mixed precision).
"""
import math
from typing import Optional, Tuple

import torch
from torch import Tensor


_EPS = 1e-5  # smallest initial value of a learnable scale


def sign(x: Tensor) -> Tensor:
    """Sign with ``sign(0) = +1``: values {-1, +1} in the dtype of ``x``.

    Computed as ``copysign(1, x + 0)``: adding +0 turns -0 into +0, so every
    ``x >= 0`` gives +1 exactly as ``where(x >= 0, 1, -1)`` would, without
    the boolean intermediate (several times faster on CPU).
    """
    one = torch.ones((), dtype=x.dtype, device=x.device)
    return torch.copysign(one, x + 0)


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
        # at least float32; float64 probabilities (exact inference) stay so
        q = a.to(torch.promote_types(a.dtype, torch.float32)) / alpha
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
