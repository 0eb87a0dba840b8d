"""Packed binary layers: trained binary linears / convs on bit-packed kernels.

:class:`PackedBinaryLinear` and :class:`PackedBinaryConv2d` are built from a
trained :class:`~mmseg_didb.binary.BinaryLinear` /
:class:`~mmseg_didb.binary.BinaryConv2d` with ``from_binary`` and compute its
eval-mode output: the weight signs are packed once, with the weight scale
``a_r`` (per row, per tensor or learned) kept as a float vector; the input is
binarized and packed on the fly by the layer's own input binarizer (its
learned shift, running magnitude, ASM statistics or BiT scale decide the
bits), and one XNOR-popcount kernel gives ``dot * a_in * a_r + bias``. A
``BatchNorm`` that follows the layer runs in the kernel's write-back
(:meth:`PackedBinaryConv2d.fold_bn`).
"""
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..binary.exact import (batchnorm_affine, inference_weights,
                            mean_exact)
from ..binary.quantizers import (ApproxSign, ASMSign, ElasticSign, RSign,
                                 SignSTE)
from .conv_kernels import binary_conv2d, pack_conv_input, pack_conv_weight
from .kernels import UnitEpilogue, _pack_rows, binary_linear_unit, pack_bits

__all__ = ['PackedBinaryLinear', 'PackedBinaryConv2d', 'InputBinarizer',
           'binarizer_on']


def binarizer_on(q: Optional[nn.Module], kind: str) -> bool:
    """True for an enabled binarizer of ``kind`` ('weight', 'activation',
    'attention')."""
    return (q is not None and getattr(q, 'kind', None) == kind
            and bool(getattr(q, 'enabled', True)))


class InputBinarizer(nn.Module):
    """The eval-mode sign rule of an activation binarizer, for packing.

    ``bit = x / m_c + shift >= 0`` with the running magnitude ``m`` (if the
    binarizer scales its input) and a shift that is the learned per-channel
    bias (RSign, BiT elastic) or, for ASM, ``-(b_c + k_c * mean(x / m))``
    per sample. The output magnitude (1, or BiT's ``alpha``) is part of
    the layer's output scale (:func:`~mmseg_didb.binary.exact.inference_weights`).

    Args:
        quantizer: an enabled activation binarizer of the preset table.
    """

    def __init__(self, quantizer: nn.Module) -> None:
        super().__init__()
        if not binarizer_on(quantizer, 'activation'):
            raise ValueError('the layer has no enabled input binarizer: its '
                             'inputs are not binary, so it cannot run on '
                             'bit-packed kernels')
        supported = (SignSTE, ApproxSign, RSign, ElasticSign, ASMSign)
        if not isinstance(quantizer, supported):
            raise TypeError(f'no packed rule for {type(quantizer).__name__}; '
                            f'supported: {[c.__name__ for c in supported]}')
        for m in quantizer.modules():
            init = getattr(m, 'initialized', None)
            if isinstance(init, Tensor) and not bool(init):
                raise RuntimeError(
                    f'{type(m).__name__} was never run, so its data-dependent '
                    'scale is not initialised: pack a trained layer (or run '
                    'one forward pass first)')
        self.channel_dim = quantizer.channel_dim
        self.asm = isinstance(quantizer, ASMSign)
        scale = getattr(quantizer, 'input_scale', None)
        self.register_buffer(
            'divisor', None if scale is None else
            scale.magnitude.detach().clone().float())
        bias = getattr(quantizer, 'bias', None)
        self.register_buffer(
            'shift', None if bias is None else bias.detach().clone().float())
        self.register_buffer(
            'asm_k', quantizer.k.detach().clone().float() if self.asm else
            None)

    def asm_shift(self, t: Tensor, channel_dim: int) -> Tensor:
        """ASM's per-sample shift of the (scaled) input ``t``: (B, C)."""
        dim = channel_dim % t.dim()
        red = [d for d in range(1, t.dim()) if d != dim]
        mean = mean_exact(t.float(), red) if red else t.float()
        mean = mean.reshape(t.shape[0], -1)
        return self.shift + self.asm_k * mean

    def rows_rule(self, x: Tensor) -> Tuple[Tensor, Optional[Tensor],
                                            Optional[Tensor], int]:
        """How to binarize the channels-last rows of ``x`` ``(B, ..., K)``.

        Returns:
            ``(rows, div, add, rows_per_group)``: the bit of a row element
            is ``rows / div + add >= 0``, ``add`` per channel or ``(B, K)``
            for the ``rows_per_group`` rows of each sample (ASM).
        """
        k = x.shape[-1]
        rows = x.reshape(-1, k)
        if not self.asm:
            return rows, self.divisor, self.shift, 1
        t = x if self.divisor is None else x / self.divisor.to(x.dtype)
        # channels-last: the statistics are over every axis but B and K
        add = -self.asm_shift(t.reshape(x.shape[0], -1, k), -1)
        return t.reshape(-1, k), None, add, rows.shape[0] // x.shape[0]

    def pack_tokens(self, x: Tensor) -> Tensor:
        """``(B, ..., K)`` -> packed rows ``(B * ..., Kw)`` (channels last)."""
        rows, div, add, per = self.rows_rule(x)
        return _pack_rows(rows, div, add, per)

    def pack_maps(self, x: Tensor) -> Tensor:
        """``(N, C, H, W)`` -> ``(N, H*W, Cw)`` channel bits (from NCHW or
        channels-last memory)."""
        if x.is_contiguous(memory_format=torch.channels_last) and \
                not x.is_contiguous():
            n, c, h, w = x.shape
            return self.pack_tokens(x.permute(0, 2, 3, 1)).view(n, h * w, -1)
        if not self.asm:
            return pack_conv_input(x, self.divisor, self.shift)
        t = x if self.divisor is None else x / self.divisor.to(
            x.dtype).view(1, -1, 1, 1)
        return pack_conv_input(t, None, -self.asm_shift(t, 1))


def _weight_bits_and_affine(layer: nn.Module) -> Tuple[Tensor, Tensor]:
    """The trained layer's weight pattern (True = +1) and the per-output
    scale of its integer dot (weight scale times input level,
    :func:`~mmseg_didb.binary.exact.inference_weights`)."""
    if not binarizer_on(layer.weight_quantizer, 'weight'):
        raise ValueError('the layer has no enabled weight binarizer: its '
                         'weights are not binary, so it cannot run on '
                         'bit-packed kernels')
    pattern, scale, _ = inference_weights(layer)
    return pattern, scale


class _PackedLayer(nn.Module):
    """Packed weight words, per-output ``scale`` and ``bias`` (float32
    buffers) and the input binarizer, shared by the packed layers."""

    def __init__(self, weight_words: Tensor, scale: Tensor,
                 bias: Optional[Tensor], binarizer: InputBinarizer) -> None:
        super().__init__()
        self.register_buffer('weight_words', weight_words)
        self.register_buffer('scale', scale.float())
        self.register_buffer('bias', None if bias is None else
                             bias.detach().clone().float())
        # a following BatchNorm fused into the write-back (fold_bn)
        self.register_buffer('bn_scale', None)
        self.register_buffer('bn_shift', None)
        self.binarizer = binarizer

    @staticmethod
    def exact_inference() -> bool:
        """A packed layer always computes the exact inference arithmetic
        (:mod:`mmseg_didb.binary.exact`): the parts of its unit that stay
        modules use it too."""
        return True

    def output_scale(self) -> Tensor:
        """``a_r * a_in`` per output (a folded BatchNorm included): what
        multiplies the integer dot."""
        return self.scale

    def fold_bn(self, bn: nn.Module) -> None:
        """Fuse an eval-mode BatchNorm (any dimension) that follows this
        layer into the kernel's write-back: ``y * g + c`` after ``dot *
        scale + bias`` (:func:`~mmseg_didb.binary.exact.batchnorm_affine`,
        the fake-quantized model's exact inference arithmetic)."""
        self.bn_scale, self.bn_shift = batchnorm_affine(bn)

    def with_bn(self, epilogue: Optional[UnitEpilogue]
                ) -> Optional[UnitEpilogue]:
        """``epilogue`` with the fused BatchNorm (if any) added."""
        if self.bn_scale is None:
            return epilogue
        epilogue = UnitEpilogue() if epilogue is None else epilogue
        epilogue.bn_scale, epilogue.bn_shift = self.bn_scale, self.bn_shift
        return epilogue


class PackedBinaryLinear(_PackedLayer):
    """Inference linear on packed signs: ``dot(x_b, w_b) * a_in a_r + b``.

    Build with :meth:`from_binary`. Takes FP inputs ``(..., in_features)``
    and returns FP outputs, like the layer it replaces.
    """

    def __init__(self, in_features: int, out_features: int,
                 weight_words: Tensor, scale: Tensor, bias: Optional[Tensor],
                 binarizer: InputBinarizer) -> None:
        super().__init__(weight_words, scale, bias, binarizer)
        self.in_features = in_features
        self.out_features = out_features

    @classmethod
    def from_binary(cls, layer: nn.Module) -> 'PackedBinaryLinear':
        """From a trained :class:`~mmseg_didb.binary.BinaryLinear` whose
        weight and input binarizers are both enabled."""
        if not isinstance(layer, nn.Linear):
            raise TypeError(f'expected a BinaryLinear, got {type(layer)}')
        pattern, scale = _weight_bits_and_affine(layer)
        binarizer = InputBinarizer(layer.input_quantizer)
        return cls(layer.in_features, layer.out_features, pack_bits(pattern),
                   scale, layer.bias, binarizer)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f'expected {self.in_features} input features, '
                             f'got shape {tuple(x.shape)}')
        return self.forward_rows(x).reshape(
            *x.shape[:-1], self.out_features).to(x.dtype)

    def forward_rows(self, x: Tensor,
                     epilogue: Optional[UnitEpilogue] = None) -> Tensor:
        """``(B, ..., K)`` -> ``(rows, N)`` float32 rows, with an optional
        unit tail fused into the kernel's write-back."""
        rows, div, add, per = self.binarizer.rows_rule(x)
        return binary_linear_unit(rows, self.in_features, self.weight_words,
                                  self.output_scale(), self.bias, div, add,
                                  per, self.with_bn(epilogue))

    def extra_repr(self) -> str:
        return (f'in_features={self.in_features}, out_features='
                f'{self.out_features}, bias={self.bias is not None}')


def _pair(v) -> Tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class PackedBinaryConv2d(_PackedLayer):
    """Inference convolution on packed signs (any kernel size, stride,
    dilation and zero padding; groups 1).

    Zero padding pads the *binarized* input with 0, which one bit cannot
    hold: the kernel treats padding taps as absent (their popcount is
    removed per output channel and tap), so the result equals the
    fake-quantized layer's exactly up to float rounding of the scales.
    """

    def __init__(self, in_channels: int, out_channels: int,
                 kernel_size: Tuple[int, int], stride: Tuple[int, int],
                 padding: Tuple[int, int], dilation: Tuple[int, int],
                 weight_words: Tensor, weight_pop: Tensor, scale: Tensor,
                 bias: Optional[Tensor], binarizer: InputBinarizer) -> None:
        super().__init__(weight_words, scale, bias, binarizer)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.stride = stride
        self.padding = padding
        self.dilation = dilation
        self.register_buffer('weight_pop', weight_pop)

    @classmethod
    def from_binary(cls, layer: nn.Module) -> 'PackedBinaryConv2d':
        """From a trained :class:`~mmseg_didb.binary.BinaryConv2d` whose
        weight and input binarizers are both enabled."""
        if not isinstance(layer, nn.Conv2d):
            raise TypeError(f'expected a BinaryConv2d, got {type(layer)}')
        if layer.groups != 1:
            raise ValueError('packed convolutions support groups=1 only')
        if layer.padding_mode != 'zeros':
            raise ValueError('packed convolutions support zero padding only, '
                             f'got padding_mode={layer.padding_mode!r}')
        kernel = _pair(layer.kernel_size)
        dilation = _pair(layer.dilation)
        padding = layer.padding
        if isinstance(padding, str):
            if padding == 'valid':
                padding = (0, 0)
            elif all(d * (k - 1) % 2 == 0 for k, d in zip(kernel, dilation)):
                padding = tuple(d * (k - 1) // 2
                                for k, d in zip(kernel, dilation))
            else:
                raise ValueError("padding='same' with an even kernel needs "
                                 'asymmetric padding; use numeric padding')
        pattern, scale = _weight_bits_and_affine(layer)
        words, pop = pack_conv_weight(pattern)
        return cls(layer.in_channels, layer.out_channels, kernel,
                   _pair(layer.stride), _pair(padding), dilation, words, pop,
                   scale, layer.bias, InputBinarizer(layer.input_quantizer))

    def output_size(self, hw: Sequence[int]) -> Tuple[int, int]:
        """Output ``(H, W)`` for an input of ``hw``."""
        return tuple(
            (s + 2 * p - d * (k - 1) - 1) // st + 1 for s, p, d, k, st in zip(
                hw, self.padding, self.dilation, self.kernel_size,
                self.stride))

    def forward(self, x: Tensor,
                epilogue: Optional[UnitEpilogue] = None) -> Tensor:
        """``(N, C, H, W)`` -> ``(N, O, Ho, Wo)`` in channels-last memory,
        with an optional unit tail fused into the kernel's write-back (its
        ``res`` rows are the output pixels in channels-last order)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f'expected (N, {self.in_channels}, H, W), got '
                             f'{tuple(x.shape)}')
        bits = self.binarizer.pack_maps(x)
        y = binary_conv2d(bits, x.shape[-2:], self.weight_words,
                          self.weight_pop, self.in_channels, self.kernel_size,
                          self.stride, self.padding, self.dilation,
                          self.output_scale(), self.bias,
                          self.with_bn(epilogue))
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return (f'{self.in_channels}, {self.out_channels}, kernel_size='
                f'{self.kernel_size}, stride={self.stride}, padding='
                f'{self.padding}, dilation={self.dilation}')
