"""Binary linear/conv layers and the binary unit built from them.

* :class:`BinaryLinear`, :class:`BinaryConv2d`: ``nn.Linear`` / ``nn.Conv2d``
  taking a weight and an input quantizer (Larq-style ``kernel_quantizer`` /
  ``input_quantizer``). With no quantizers, or with them disabled, they are
  exactly the FP layers.
* the FP shortcuts (:mod:`.shortcuts`): :class:`ChannelShortcut` between
  any widths, :class:`MergeShortcut` of patch merging, :class:`ConvBypass`.
* :class:`BinaryLinearUnit`:
  ``y = act(norm(BinaryLinear(q(x))) + shortcut(x))`` on tokens, the block of
  BinaryViT (Le & Li, CVPRW 2023) and DIDB-ViT (Gao et al. 2025) used for q,
  k, v, proj, fc1, fc2 and patch merging.
* :class:`BinaryConvUnit`: ``y = act(norm(BinaryConv2d(q(x))) + bypass(x))``
  on maps, the binary conv block of BiDense (CFB, arXiv 2411.10346).
"""
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import Tensor, nn

from .compact import binary_operands
from .exact import (batchnorm_exact, compute_dtype, exact_inference,
                    has_running_stats, inference_weights, layer_norm_exact,
                    signs_of)
from .presets import BinaryPreset, resolve_preset
from .quantizers import build_act_quantizer, build_weight_quantizer
from .rprelu import GridLike, TokenRPReLU
from .shortcuts import ChannelShortcut, ConvBypass, MergeShortcut

__all__ = [
    'BinaryLinear', 'BinaryConv2d', 'TokenNorm', 'BinaryLinearUnit',
    'BinaryConvUnit'
]

QuantizerArg = Optional[Union[nn.Module, str]]
PresetArg = Union[str, BinaryPreset, dict]


def _check_quantizer(q: QuantizerArg, kind: str, what: str) -> None:
    if q is None:
        return
    if not isinstance(q, nn.Module) or getattr(q, 'kind', kind) != kind:
        raise TypeError(f'{what} must be an nn.Module quantizer of kind '
                        f'{kind!r} (or a name), got {q!r}')


class _BinaryMixin:
    """Quantizer handling shared by the binary linear and conv layers."""
    #: how a per-output vector broadcasts against the output
    _channel_shape: Tuple[int, ...] = (-1, )
    weight: nn.Parameter
    weight_quantizer: Optional[nn.Module]
    input_quantizer: Optional[nn.Module]

    def _init_quantizers(self, weight_quantizer: QuantizerArg,
                         input_quantizer: QuantizerArg, in_channels: int,
                         channel_dim: int,
                         preset: Optional[PresetArg]) -> None:
        if preset is not None:
            p = resolve_preset(preset)
            weight_quantizer = (p.weight if weight_quantizer is None else
                                weight_quantizer)
            input_quantizer = (p.act if input_quantizer is None else
                               input_quantizer)
        if isinstance(weight_quantizer, str):
            weight_quantizer = build_weight_quantizer(weight_quantizer)
        if isinstance(input_quantizer, str):
            input_quantizer = build_act_quantizer(input_quantizer, in_channels,
                                                  channel_dim)
        _check_quantizer(weight_quantizer, 'weight', 'weight_quantizer')
        _check_quantizer(input_quantizer, 'activation', 'input_quantizer')
        if weight_quantizer is not None and hasattr(weight_quantizer, 'setup'):
            weight_quantizer.setup(self.weight)  # e.g. PWS per-row alpha
        self.weight_quantizer = weight_quantizer
        self.input_quantizer = input_quantizer

    def quantized_weight(self) -> Tensor:
        """The weight used in the forward pass (binary when enabled)."""
        if self.weight_quantizer is None:
            return self.weight
        return self.weight_quantizer(self.weight)

    def quantized_input(self, x: Tensor) -> Tensor:
        if self.input_quantizer is None:
            return x
        return self.input_quantizer(x)

    def exact_inference(self) -> bool:
        """Whether this call runs the exact inference arithmetic
        (:mod:`mmseg_didb.binary.exact`): no autograd, both binarizers on."""
        return exact_inference((self.weight_quantizer, self.input_quantizer))

    def exact_forward(self, x: Tensor) -> Tensor:
        """Inference output as the packed kernels compute it: the exact
        integer product of the input and weight signs, times the scale and
        plus the bias of :func:`~mmseg_didb.binary.exact.inference_weights`;
        float32 (float64 for a float64 input)."""
        x_b = self.quantized_input(x)  # first: it may set a lazy scale
        dtype = compute_dtype(x_b)
        pattern, scale, bias = inference_weights(self)
        dot = self._sign_product(torch.sign(x_b.to(dtype)),
                                 signs_of(pattern).to(dtype)).round()
        y = dot * scale.to(dot).view(self._channel_shape)
        if bias is not None:
            y = y + bias.to(dot).view(self._channel_shape)
        return y

    def binary_operands(self, x_b: Tensor, w_b: Tensor):
        """Context in which the layer's matmul / conv keeps its binary
        operands as sign bits for backward (:mod:`mmseg_didb.binary.
        compact`): ``x_b`` when the input quantizer is on, ``w_b`` when the
        weight quantizer is."""
        ops = []
        q = self.input_quantizer
        if q is not None and q.enabled:
            ops.append((x_b, q.output_level().to(x_b.device)))
        q = self.weight_quantizer
        if q is not None and q.enabled:
            ops.append((w_b, q.scale(self.weight)))
        return binary_operands(ops)


class BinaryLinear(_BinaryMixin, nn.Linear):
    """``nn.Linear`` with a weight and an input quantizer.

    ``y = q_in(x) @ q_w(W)^T + b``. Larq-style: the quantizers are objects
    (:mod:`mmseg_didb.binary.quantizers`) or names ('react', 'rsign', ...);
    None means FP. With both None or disabled it equals ``nn.Linear`` exactly.

    Args:
        in_features: input width.
        out_features: output width.
        bias: learnable bias.
        weight_quantizer: weight quantizer (kind 'weight'), name or None.
        input_quantizer: activation quantizer (kind 'activation') acting on the
            last dim, name or None.
        preset: optional preset (name/object) filling quantizers left None.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 weight_quantizer: QuantizerArg = None,
                 input_quantizer: QuantizerArg = None,
                 preset: Optional[PresetArg] = None, device=None,
                 dtype=None) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device,
                         dtype=dtype)
        self._init_quantizers(weight_quantizer, input_quantizer, in_features,
                              -1, preset)

    def forward(self, x: Tensor) -> Tensor:
        if self.exact_inference():
            return self.exact_forward(x).to(x.dtype)
        x_b, w_b = self.quantized_input(x), self.quantized_weight()
        with self.binary_operands(x_b, w_b):
            return F.linear(x_b, w_b, self.bias)

    def _sign_product(self, x: Tensor, w: Tensor) -> Tensor:
        return F.linear(x, w)


class BinaryConv2d(_BinaryMixin, nn.Conv2d):
    """``nn.Conv2d`` with a weight and an input quantizer.

    Same contract as :class:`BinaryLinear`; the input quantizer acts on the
    channel axis 1 and weight rows are output channels. Registered in
    mmengine's root ``MODELS`` by :mod:`mmseg_didb.models`, so mmcv's
    ``ConvModule(conv_cfg=dict(type='BinaryConv2d', preset='react'))`` builds
    it. Note: zero padding pads the *binarized* input with 0 (not +-1), as in
    ReActNet / BiDense.
    """
    _channel_shape = (1, -1, 1, 1)

    def __init__(self, in_channels: int, out_channels: int,
                 kernel_size: Union[int, Tuple[int, int]],
                 stride: Union[int, Tuple[int, int]] = 1,
                 padding: Union[int, Tuple[int, int], str] = 0,
                 dilation: Union[int, Tuple[int, int]] = 1, groups: int = 1,
                 bias: bool = True, weight_quantizer: QuantizerArg = None,
                 input_quantizer: QuantizerArg = None,
                 preset: Optional[PresetArg] = None,
                 padding_mode: str = 'zeros', device=None, dtype=None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride,
                         padding=padding, dilation=dilation, groups=groups,
                         bias=bias, padding_mode=padding_mode, device=device,
                         dtype=dtype)
        self._init_quantizers(weight_quantizer, input_quantizer, in_channels,
                              1, preset)

    def forward(self, x: Tensor) -> Tensor:
        if self.exact_inference():
            # channels-last maps, as the packed kernels write them: the FP
            # operations that follow (norms, resizes, pooling) round alike
            # only on the same memory layout
            return self.exact_forward(x).to(x.dtype).contiguous(
                memory_format=torch.channels_last)
        x_b, w_b = self.quantized_input(x), self.quantized_weight()
        with self.binary_operands(x_b, w_b):
            return self._conv_forward(x_b, w_b, self.bias)

    def _sign_product(self, x: Tensor, w: Tensor) -> Tensor:
        return self._conv_forward(x, w, None)


class TokenNorm(nn.Module):
    """BatchNorm over tokens: normalises the C channels of (B, N, C) input.

    The BinaryViT-Le option of BatchNorm in place of LayerNorm in binary units.
    The ``nn.BatchNorm1d`` is a child (``bn``) applied to (B, C, N), so
    ``nn.SyncBatchNorm.convert_sync_batchnorm`` converts it correctly.

    Args:
        num_features: number of channels C.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(num_features)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3:
            raise ValueError(f'TokenNorm expects tokens (B, N, C), got shape '
                             f'{tuple(x.shape)}')
        return self.bn(x.transpose(1, 2)).transpose(1, 2)


def _running_batchnorm(m: nn.Module) -> bool:
    """An eval-mode BatchNorm that uses its running statistics."""
    return has_running_stats(m) and not m.training


def _build_norm(kind: str, channels: int) -> nn.Module:
    if kind == 'ln':
        return nn.LayerNorm(channels)
    if kind == 'bn':
        return TokenNorm(channels)
    raise ValueError(f"norm must be 'ln' or 'bn', got {kind!r}")


class BinaryLinearUnit(nn.Module):
    """Binary linear unit ``y = act(norm(BinaryLinear(q(x))) + shortcut(x))``.

    The unit of BinaryViT (Le & Li, CVPRW 2023) as used throughout DIDB-ViT
    (Gao et al. 2025): the activation shift (RSign bias / ASM / ...) lives in
    the input quantizer of ``linear``; the shortcut is FP and taken from the
    unquantized input; the activation is (Token) RPReLU or PReLU from the
    preset. When ``preset.unit`` is False (the 'fp' preset) the unit is exactly
    ``linear`` with no norm, shortcut or activation, so the FP topology equals
    timm's.

    Args:
        in_features: input width.
        out_features: output width.
        preset: preset name / object / dict.
        bias: bias of ``linear``.
        shortcut: add the FP channel shortcut.
        activation: close with the preset activation (else identity).
        grid: reference :class:`~.rprelu.TokenGrid` of Token RPReLU.

    Submodules: ``linear`` (:class:`BinaryLinear`), ``norm``, ``shortcut``,
    ``act`` (the last three are None in the FP topology; ``shortcut`` is None
    when disabled).
    """

    def __init__(self, in_features: int, out_features: int,
                 preset: PresetArg, bias: bool = True, shortcut: bool = True,
                 activation: bool = True,
                 grid: Optional[GridLike] = None) -> None:
        super().__init__()
        self.preset = resolve_preset(preset)
        p = self.preset
        self.in_features = in_features
        self.out_features = out_features
        self.linear = BinaryLinear(in_features, out_features, bias=bias,
                                   weight_quantizer=p.weight_quantizer(),
                                   input_quantizer=p.act_quantizer(
                                       in_features, -1))
        if not p.unit:
            self.norm = self.shortcut = self.act = None
            return
        self.norm = _build_norm(p.norm, out_features)
        self.shortcut = (ChannelShortcut(in_features, out_features, -1)
                         if shortcut else None)
        self.act = (p.unit_activation(out_features, grid, -1)
                    if activation else nn.Identity())

    def forward(self, x: Tensor,
                hw: Optional[Sequence[int]] = None) -> Tensor:
        """Apply to tokens ``x`` (B, N, C); ``hw`` is the token grid (H, W)."""
        y = self.linear(x)
        if self.norm is None:
            return y
        y = self._norm(y)
        if self.shortcut is not None:
            y = y + self.shortcut(x)
        if isinstance(self.act, TokenRPReLU):
            return self.act(y, hw)
        return self.act(y)


    def _norm(self, y: Tensor) -> Tensor:
        """``norm(y)``; in the exact inference arithmetic
        (:mod:`mmseg_didb.binary.exact`) a LayerNorm with float64 statistics
        and an eval-mode token BatchNorm as ``y * g + c``."""
        if not self.linear.exact_inference():
            return self.norm(y)
        if isinstance(self.norm, nn.LayerNorm):
            return layer_norm_exact(y, self.norm.weight, self.norm.bias,
                                    self.norm.eps).to(y.dtype)
        if isinstance(self.norm, TokenNorm) and _running_batchnorm(
                self.norm.bn):
            return batchnorm_exact(y, self.norm.bn, -1)
        return self.norm(y)


class BinaryConvUnit(nn.Module):
    """Binary conv unit ``y = act(norm(BinaryConv2d(q(x))) + bypass(x))``.

    BiDense's CFB (arXiv 2411.10346) with the preset's binarizers: the
    activation shift is in the input quantizer of ``conv``, which first
    divides its input by a running per-channel magnitude
    (:class:`~mmseg_didb.binary.quantizers.RunningMagnitude`) so that the
    sign's gradient window covers it; ``bypass`` is FP (average-pool when
    strided, channel repeat / group average between widths).
    When ``preset.unit`` is False (the 'fp' preset) there is no bypass and the
    default activation is ReLU, i.e. mmcv ``ConvModule``'s conv-norm-act.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: conv kernel size.
        preset: preset name / object / dict.
        stride: conv stride (the bypass pools with the same stride).
        padding: conv padding.
        dilation: conv dilation.
        norm: norm module (default ``BatchNorm2d(out_channels)``).
        act: activation module (default: the preset unit activation on
            channel axis 1; ReLU for the FP topology).
        bypass: add the FP bypass.
        groups: conv groups.
        bias: conv bias (default False: a norm follows).

    Submodules: ``conv``, ``norm``, ``bypass`` (None when off), ``act``.
    """

    def __init__(self, in_channels: int, out_channels: int,
                 kernel_size: Union[int, Tuple[int, int]], preset: PresetArg,
                 stride: int = 1, padding: Union[int, Tuple[int, int]] = 0,
                 dilation: Union[int, Tuple[int, int]] = 1,
                 norm: Optional[nn.Module] = None,
                 act: Optional[nn.Module] = None, bypass: bool = True,
                 groups: int = 1, bias: bool = False) -> None:
        super().__init__()
        self.preset = resolve_preset(preset)
        p = self.preset
        if not isinstance(stride, int):
            raise TypeError(f'BinaryConvUnit stride must be an int, got '
                            f'{stride!r}')
        # conv inputs are not normalised (raw backbone features, sums of FP
        # bypasses): the binarizer divides them by a running magnitude
        self.conv = BinaryConv2d(in_channels, out_channels, kernel_size,
                                 stride=stride, padding=padding,
                                 dilation=dilation, groups=groups, bias=bias,
                                 weight_quantizer=p.weight_quantizer(),
                                 input_quantizer=p.act_quantizer(
                                     in_channels, 1, input_scale=True))
        self.norm = norm if norm is not None else nn.BatchNorm2d(out_channels)
        if act is None:
            act = (p.unit_activation(out_channels, channel_dim=1)
                   if p.unit else nn.ReLU(inplace=False))
        self.act = act
        self.bypass = (ConvBypass(in_channels, out_channels, stride)
                       if bypass and p.unit else None)

    #: activation checkpointing of the unit in training (set by the heads'
    #: and the neck's ``with_cp``): its inner tensors are recomputed in the
    #: backward pass instead of being kept
    with_cp: bool = False

    def forward(self, x: Tensor) -> Tensor:
        if self.with_cp and self.training and x.requires_grad:
            return torch.utils.checkpoint.checkpoint(
                self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        if self.conv.exact_inference() and _running_batchnorm(self.norm):
            y = batchnorm_exact(y, self.norm, 1)  # mmseg_didb.binary.exact
        else:
            y = self.norm(y)
        if self.bypass is not None:
            b = self.bypass(x)
            if b.shape[-2:] != y.shape[-2:]:
                raise ValueError(
                    f'BinaryConvUnit bypass gives {tuple(b.shape[-2:])} but '
                    f'the conv gives {tuple(y.shape[-2:])}; use "same" '
                    'padding (padding = dilation * (kernel_size - 1) // 2) or '
                    'bypass=False')
            y = y + b
        return self.act(y)
