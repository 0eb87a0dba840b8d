"""Bit-packed binary convolution, native or PyTorch (the packing convention
and the kernel dispatch are those of :mod:`.kernels`)."""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .kernels import (_C, UnitEpilogue, _bits_to_words, kernels_available,
                      unpack_signs)

__all__ = ['pack_conv_input', 'pack_conv_weight', 'binary_conv2d']


def pack_conv_input(x: Tensor, div: Optional[Tensor] = None,
                    add: Optional[Tensor] = None) -> Tensor:
    """Channel sign bits of a map: ``(N, C, H, W)`` -> ``(N, H*W, Cw)``.

    The bit of channel ``c`` is ``x / div[c] + add[c] >= 0`` (``add`` may be
    ``(N, C)``, one shift per image); the same float operations as the
    PyTorch binarizers, so the bits equal their signs.
    """
    if x.dim() != 4:
        raise ValueError(f'expected (N, C, H, W), got {tuple(x.shape)}')
    if kernels_available() and x.device.type == 'cpu':
        return _C.pack_nchw(x, div, add)
    n, c, h, w = x.shape
    t = x.float()
    if div is not None:
        t = t / div.float().view(1, c, 1, 1)
    if add is not None:
        t = t + add.float().reshape(-1, c, 1, 1)
    return _bits_to_words((t >= 0).permute(0, 2, 3, 1).reshape(n, h * w, c))


def pack_conv_weight(pattern: Tensor) -> Tuple[Tensor, Tensor]:
    """Packed conv weight and per-tap popcounts from a boolean pattern.

    Args:
        pattern: ``(O, C, kh, kw)`` bool, True = +1.

    Returns:
        ``(words (O, kh*kw, Cw), popcount (O, kh*kw) int32)``.
    """
    o, c, kh, kw = pattern.shape
    taps = pattern.permute(0, 2, 3, 1).reshape(o, kh * kw, c)
    words = _bits_to_words(taps)
    pop = taps.sum(-1).to(torch.int32)
    return words, pop


def binary_conv2d(xp: Tensor, hw: Sequence[int], wp: Tensor, wpop: Tensor,
                  channels: int, kernel_size: Sequence[int],
                  stride: Sequence[int], padding: Sequence[int],
                  dilation: Sequence[int], scale: Tensor,
                  bias: Optional[Tensor] = None,
                  epilogue: Optional[UnitEpilogue] = None) -> Tensor:
    """Convolution of packed +-1 inputs with packed +-1 weights.

    Args:
        xp: ``(N, H*W, Cw)`` from :func:`pack_conv_input`.
        hw: ``(H, W)``.
        wp, wpop: from :func:`pack_conv_weight`.
        channels: C.
        kernel_size, stride, padding, dilation: as ``F.conv2d`` (zero
            padding: the padded input is 0, not +-1).
        scale, bias: per output channel; the result is
            ``conv(x_sign, w_sign) * scale + bias``.
        epilogue: a unit's FP tail applied per output pixel (its ``res``
            rows are the output pixels in channels-last order; no token
            terms).

    Returns:
        ``(N, O, H_out, W_out)`` float32 in channels-last memory (a row of
        channels per pixel).
    """
    (h, w), (kh, kw) = hw, kernel_size
    if epilogue is not None and (epilogue.token_gamma is not None
                                 or epilogue.dyn_gamma is not None):
        raise ValueError('convolutions have no token terms')
    if kernels_available() and xp.device.type == 'cpu':
        ep = epilogue or UnitEpilogue()
        return _C.conv_unit(xp, h, w, wp, wpop, channels, kh, kw, stride[0],
                            stride[1], padding[0], padding[1], dilation[0],
                            dilation[1], scale, bias, ep.tensors(), ep.eps)
    n = xp.shape[0]
    x = unpack_signs(xp, channels).reshape(n, h, w, channels).permute(
        0, 3, 1, 2)
    o = wp.shape[0]
    wt = unpack_signs(wp, channels).reshape(o, kh, kw, channels).permute(
        0, 3, 1, 2)
    y = F.conv2d(x.double(), wt.double(), None, tuple(stride), tuple(padding),
                 tuple(dilation)).float()
    y = y * scale.float().view(1, -1, 1, 1)
    if bias is not None:
        y = y + bias.float().view(1, -1, 1, 1)
    y = y.contiguous(memory_format=torch.channels_last)
    if epilogue is not None:
        rows = epilogue.apply(y.permute(0, 2, 3, 1).reshape(-1, o))
        y = rows.reshape(n, y.shape[2], y.shape[3], o).permute(0, 3, 1, 2)
    return y
