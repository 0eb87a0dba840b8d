"""Turning the ``ConvModule``s of an mmseg decode head into binary conv units.

The binary heads keep mmseg's head classes (topology, arguments, forward) and
only swap every ``mmcv.cnn.ConvModule`` for a
:class:`~mmseg_didb.binary.BinaryConvUnit`,
``y = act(norm(BinaryConv2d(q(x))) + bypass(x))`` (BiDense CFB, arXiv
2411.10346). The final 1x1 classifier ``conv_seg`` is a plain ``nn.Conv2d``,
not a ``ConvModule``, so it stays FP.
"""
from typing import Optional

import torch
from mmcv.cnn import ConvModule, build_norm_layer
from torch import Tensor, nn

from ...binary import BinaryConvUnit, BinaryPreset, ConvBypass

__all__ = ['ChannelResize', 'binary_unit_from_conv_module',
           'binarize_conv_modules']


class ChannelResize(nn.Module):
    """Parameter-free FP bypass between any two channel widths.

    Generalises :class:`~mmseg_didb.binary.ChannelShortcut` (and BiDense's
    bypass, which also repeats or merges channels) to widths that do not divide
    each other, as mmseg's UPerNet needs (e.g. 96 -> 512, 2816 -> 512):

    * widening: output channel ``j`` is input channel ``j mod in`` (the
      channels are tiled and the last tile is cut);
    * narrowing: output channel ``j`` is the mean of the input channels
      ``{j, j + out, j + 2 out, ...}`` below ``in`` (groups of
      ``floor(in / out)`` or ``ceil(in / out)`` channels).

    When one width divides the other this is exactly ``ChannelShortcut``.

    Args:
        in_channels: Input width.
        out_channels: Output width.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        if in_channels <= 0 or out_channels <= 0:
            raise ValueError('ChannelResize needs positive widths, got '
                             f'in={in_channels}, out={out_channels}')
        self.in_channels = in_channels
        self.out_channels = out_channels
        if out_channels >= in_channels:
            index = torch.arange(out_channels) % in_channels
            self.register_buffer('index', index, persistent=False)
            self.register_buffer('count', None, persistent=False)
        else:
            groups = -(-in_channels // out_channels)  # ceil
            count = torch.zeros(out_channels)
            count.index_add_(0,
                             torch.arange(in_channels) % out_channels,
                             torch.ones(in_channels))
            self.register_buffer('index', None, persistent=False)
            self.register_buffer('count', count, persistent=False)
            self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] != self.in_channels:
            raise ValueError(f'ChannelResize expects {self.in_channels} '
                             f'channels on dim 1, got shape {tuple(x.shape)}')
        if self.index is not None:
            return x.index_select(1, self.index)
        pad = self.groups * self.out_channels - self.in_channels
        x = nn.functional.pad(x, (0, 0, 0, 0, 0, pad))
        b, _, h, w = x.shape
        summed = x.reshape(b, self.groups, self.out_channels, h, w).sum(1)
        return summed / self.count.to(x.dtype).view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f'{self.in_channels}, {self.out_channels}'


def _bypass(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """FP bypass: the toolkit's when widths divide, else with ChannelResize."""
    try:
        return ConvBypass(in_channels, out_channels, stride)
    except ValueError:
        pass
    channels = ChannelResize(in_channels, out_channels)
    if stride == 1:
        return channels
    # same pooling as the toolkit's ConvBypass
    pool = nn.AvgPool2d(stride, stride, ceil_mode=True,
                        count_include_pad=False)
    return nn.Sequential(pool, channels)


def binary_unit_from_conv_module(module: ConvModule, preset: BinaryPreset,
                                 norm_cfg: Optional[dict],
                                 act_cfg: Optional[dict]) -> BinaryConvUnit:
    """The binary conv unit replacing one mmcv ``ConvModule``.

    Args:
        module: The ConvModule (its conv gives widths, kernel, stride,
            padding, dilation, groups).
        preset: Binary preset of the head.
        norm_cfg: mmcv norm config (``BN``, ``SyncBN``, ...). Binary conv
            outputs need a norm to be rescaled, so None means ``BN``.
        act_cfg: mmcv activation config of the head; None keeps the unit
            without activation, anything else uses the preset's unit
            activation (RPReLU / PReLU on channels).

    Returns:
        BinaryConvUnit: Unit with submodules ``conv``, ``norm``, ``bypass``
        (FP, any widths) and ``act``.
    """
    if getattr(module, 'with_explicit_padding', False):
        raise ValueError('binary heads support zero padding only, got '
                         f'padding_mode={module.padding_layer!r}')
    conv = module.conv
    stride = conv.stride[0]
    if conv.stride[0] != conv.stride[1]:
        raise ValueError(
            f'binary heads need square strides, got {conv.stride}')
    out_channels = conv.out_channels
    norm = build_norm_layer(norm_cfg or dict(type='BN'), out_channels)[1]
    act = None if act_cfg is not None else nn.Identity()
    unit = BinaryConvUnit(
        conv.in_channels,
        out_channels,
        conv.kernel_size,
        preset,
        stride=stride,
        padding=conv.padding,
        dilation=conv.dilation,
        norm=norm,
        act=act,
        bypass=False,
        groups=conv.groups)
    if preset.unit:
        # the toolkit's bypass only covers widths that divide each other
        unit.bypass = _bypass(conv.in_channels, out_channels, stride)
    return unit


def binarize_conv_modules(module: nn.Module, preset: BinaryPreset,
                          norm_cfg: Optional[dict],
                          act_cfg: Optional[dict]) -> int:
    """Replaces, in place and recursively, every ConvModule by a binary unit.

    Args:
        module: Root module (a decode head).
        preset: Binary preset.
        norm_cfg: Norm config for the units (see
            :func:`binary_unit_from_conv_module`).
        act_cfg: Activation config of the head.

    Returns:
        int: Number of ConvModules replaced.
    """
    replaced = 0
    for name, child in module.named_children():
        if isinstance(child, ConvModule):
            setattr(module, name,
                    binary_unit_from_conv_module(child, preset, norm_cfg,
                                                 act_cfg))
            replaced += 1
        else:
            replaced += binarize_conv_modules(child, preset, norm_cfg, act_cfg)
    return replaced
