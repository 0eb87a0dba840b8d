"""Exact inference: the arithmetic that the fake-quantized binary layers and
the packed kernels (:mod:`mmseg_didb.deploy`) share at inference.

A binary network decides a sign at every binarizer. An input within float
rounding of a threshold takes the side its rounding gives it, and one
flipped bit can change a whole attention row or a token's next layer, whose
changes flip more bits downstream: two implementations that differ only in
rounding (a float ``sgemm`` of ``+-a`` weights against an integer
popcount, a float32 softmax against another exp, a LayerNorm whose sums run
in another order) agree at small inputs and drift apart at real ones.

So at inference (no autograd) a binary layer whose weight and input
binarizers are both on computes what a packed kernel computes, operation
for operation (docs/method.md, "Exact inference"):

* the product of the binarized operands as an exact integer (a float
  matmul / conv of their signs, rounded), times one float32 scale per output
  and plus one float32 bias (:func:`inference_weights`);
* an eval-mode BatchNorm as ``y * g + c`` with per-channel constants
  computed once (:func:`batchnorm_exact`);
* a LayerNorm whose statistics are float64 sums (:func:`layer_norm_exact`),
  so that their float32 values do not depend on the order of the sums;
* the attention probabilities from exact integer dots and a float64
  softmax, ``Ab V`` and the DIBA terms from integer counts (in
  :mod:`mmseg_didb.models.layers`);
* every other operation elementwise, in the order of the modules.

Training keeps the plain float path (the same function up to rounding).
"""
import contextlib
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .flags import Switch

__all__ = ['exact_inference', 'exact_arithmetic', 'has_running_stats',
           'batchnorm_affine', 'batchnorm_exact',
           'inference_weights',
           'layer_norm_exact', 'mean_exact', 'signs_of',
           'compute_dtype']


_ENABLED = Switch(True)


def exact_arithmetic(enabled: bool = True
                     ) -> contextlib.AbstractContextManager:
    """Turn the exact inference arithmetic on (the default) or off inside
    the block: off, inference runs the training operations (e.g. for
    counting the model's operations as trained, or for comparing the two)."""
    return _ENABLED.set(enabled)


def exact_inference(binarizers: Sequence[Optional[nn.Module]]) -> bool:
    """Whether a computation on the outputs of ``binarizers`` runs the exact
    inference arithmetic: no autograd, every binarizer given and on, and
    not switched off by :func:`exact_arithmetic`."""
    return (bool(_ENABLED) and not torch.is_grad_enabled()
            and all(b is not None and bool(getattr(b, 'enabled', False))
                    for b in binarizers))


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype exact inference computes in for input ``x``: float32 (the
    packed kernels'), float64 for a float64 model."""
    return torch.promote_types(x.dtype, torch.float32)


def has_running_stats(m: Optional[nn.Module]) -> bool:
    """A BatchNorm (any dimension) whose running statistics exist, so that
    it can act as a per-channel affine map (:func:`batchnorm_affine`)."""
    return (isinstance(m, nn.modules.batchnorm._BatchNorm)
            and m.track_running_stats and m.running_mean is not None)


def batchnorm_affine(bn: nn.Module) -> Tuple[Tensor, Tensor]:
    """An eval-mode BatchNorm (any dimension) as ``y * g + c`` per channel,
    float32: ``g = gamma / sqrt(var + eps)``, ``c = beta - mean * g``."""
    if not has_running_stats(bn):
        raise ValueError('the BatchNorm has no running statistics')
    g = bn.running_var.detach().float().add(bn.eps).rsqrt()
    if bn.weight is not None:
        g = g * bn.weight.detach().float()
    c = -(bn.running_mean.detach().float() * g)
    if bn.bias is not None:
        c = c + bn.bias.detach().float()
    return g, c


def batchnorm_exact(y: Tensor, bn: nn.Module, channel_dim: int) -> Tensor:
    """An eval-mode BatchNorm in the exact inference arithmetic: ``y * g +
    c`` with the constants of :func:`batchnorm_affine` (the packed kernels
    apply the same two operations in their write-back)."""
    g, c = batchnorm_affine(bn)
    shape = [1] * y.dim()
    shape[channel_dim] = -1
    return y * g.to(y).view(shape) + c.to(y).view(shape)


def inference_weights(layer: nn.Module
                      ) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """``(pattern, scale, bias)`` of a binary layer at inference: its output
    is ``dot * scale + bias`` for the integer ``dot`` of the input signs and
    the weight ``pattern`` (True = +1), with ``scale = a_r * l_in`` (the
    weight scale per output row times the input binarizer's level, rounded
    once, float32) and ``bias`` the layer's (float32)."""
    # the quantizers import this module (mean_exact): import them here
    from .quantizers import binary_level
    q = layer.weight_quantizer
    w = layer.weight.detach()
    with torch.no_grad():
        if not bool(getattr(q, 'initialized', True)):
            q(w)  # lazy scale init, as the first forward would do
        pattern = q.latent(w) >= 0
        a_r = q.scale(w).detach().float().reshape(-1)
    rows = w.shape[0]
    if a_r.numel() == 1:
        a_r = a_r.expand(rows)
    if a_r.numel() != rows:
        raise ValueError(f'weight scale of {a_r.numel()} values for {rows} '
                         'rows')
    level = torch.tensor(binary_level(layer.input_quantizer),
                         dtype=torch.float32)
    bias = None if layer.bias is None else layer.bias.detach().float()
    return pattern, a_r * level, bias


def layer_norm_exact(y: Tensor, weight: Optional[Tensor],
                     bias: Optional[Tensor], eps: float) -> Tensor:
    """LayerNorm over the last dim with float64 statistics.

    ``mu = float32(mean64(y))``, ``r = float32(1 / sqrt(var64(y) + eps))``
    (``var64`` about ``mean64``), then ``((y - mu) * r) * w + b`` in float32
    (float64 for a float64 ``y``), one rounding per operation. The float32 statistics are those of the
    exact sums except when those lie within float64 rounding of a float32
    boundary, so every implementation of this formula gets the same bits.
    """
    dtype = compute_dtype(y)
    y = y.to(dtype)
    y64 = y.double()
    mean64 = y64.mean(dim=-1, keepdim=True)
    var64 = (y64 - mean64).square().mean(dim=-1, keepdim=True)
    rstd = (var64 + eps).sqrt().reciprocal().to(dtype)
    out = (y - mean64.to(dtype)) * rstd
    if weight is not None:
        out = out * weight.detach().to(dtype)
    if bias is not None:
        out = out + bias.detach().to(dtype)
    return out


def mean_exact(x: Tensor, dim, keepdim: bool = False) -> Tensor:
    """Mean over ``dim`` accumulated in float64, in ``x``'s dtype: the same
    value whatever the order of the sum (used by the per-sample statistics
    of ASM and of the dynamic Token RPReLU, which the packed kernels
    recompute)."""
    return x.mean(dim=dim, keepdim=keepdim, dtype=torch.float64).to(x.dtype)


def signs_of(pattern: Tensor) -> Tensor:
    """A weight pattern (True = +1) as float32 ``+-1``."""
    return pattern.to(torch.float32) * 2 - 1
