"""Parameter-free FP shortcuts of the binary units (BinaryViT-Le's shortcut,
BiDense's CFB bypass)."""
from typing import Optional

import torch
from torch import Tensor, nn

__all__ = ['ChannelShortcut', 'MergeShortcut', 'ConvBypass', 'group_mean']


def group_mean(x: Tensor, out_channels: int, count: Optional[Tensor] = None,
               dim: int = -1) -> Tensor:
    """Mean of the channel groups ``{j, j + out, j + 2 out, ...}`` of ``x``
    on ``dim``: the narrowing map of :class:`ChannelShortcut`.

    The groups are added one after another and the sum divided by the
    group size (``count`` per output channel when the widths do not
    divide), an order the packed kernels repeat, so both round alike.
    """
    dim = dim % x.dim()
    c = x.shape[dim]
    total = x.narrow(dim, 0, out_channels)
    for start in range(out_channels, c, out_channels):
        part = x.narrow(dim, start, min(out_channels, c - start))
        if part.shape[dim] == out_channels:
            total = total + part
        else:  # the last, shorter group
            head = total.narrow(dim, 0, part.shape[dim]) + part
            total = torch.cat([head, total.narrow(
                dim, part.shape[dim], out_channels - part.shape[dim])], dim)
    if count is None:
        return total / (c // out_channels)
    return total / count.to(x.dtype).view(
        [-1 if d == dim else 1 for d in range(x.dim())])


class ChannelShortcut(nn.Module):
    """Parameter-free FP shortcut between any two channel widths.

    BinaryViT-Le's shortcut and BiDense's CFB bypass, extended to widths that
    do not divide each other (mmseg's UPerNet needs e.g. 96 -> 512):

    * ``in == out``: identity.
    * widening: output channel ``j`` is input channel ``j mod in`` (the
      channels are tiled, the last tile cut); ``out = k * in`` repeats them
      k times.
    * narrowing: output channel ``j`` is the mean of the input channels
      ``{j, j + out, j + 2 out, ...}`` below ``in``, i.e. groups of
      ``floor(in / out)`` or ``ceil(in / out)`` channels; for ``in = k * out``
      every group has k channels and ``average(repeat(x)) == x``.

    Args:
        in_channels: input width.
        out_channels: output width.
        channel_dim: channel axis (-1 tokens, 1 maps).
    """

    def __init__(self, in_channels: int, out_channels: int,
                 channel_dim: int = -1) -> None:
        super().__init__()
        if in_channels <= 0 or out_channels <= 0:
            raise ValueError('ChannelShortcut needs positive widths, got '
                             f'in={in_channels}, out={out_channels}')
        if in_channels == out_channels:
            self.mode = 'identity'
        elif out_channels > in_channels:
            self.mode = 'repeat'
        else:
            self.mode = 'average'
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.channel_dim = channel_dim
        # only widths that do not divide need the cyclic index / group sizes;
        # non-persistent, so checkpoints hold no key for the shortcut
        index = count = None
        if self.mode == 'repeat' and out_channels % in_channels:
            index = torch.arange(out_channels) % in_channels
        elif self.mode == 'average' and in_channels % out_channels:
            count = torch.zeros(out_channels).index_add_(
                0, torch.arange(in_channels) % out_channels,
                torch.ones(in_channels))
        self.register_buffer('index', index, persistent=False)
        self.register_buffer('count', count, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        dim = self.channel_dim % x.dim()
        if x.shape[dim] != self.in_channels:
            raise ValueError(f'ChannelShortcut expects {self.in_channels} '
                             f'channels on dim {self.channel_dim}, got shape '
                             f'{tuple(x.shape)}')
        if self.mode == 'identity':
            return x
        if self.mode == 'repeat':
            if self.index is not None:
                return x.index_select(dim, self.index)
            reps = [1] * x.dim()
            reps[dim] = self.out_channels // self.in_channels
            return x.repeat(reps)
        return group_mean(x, self.out_channels, self.count, dim)

    def extra_repr(self) -> str:
        return (f'{self.in_channels}, {self.out_channels}, mode={self.mode}, '
                f'channel_dim={self.channel_dim}')


class MergeShortcut(nn.Module):
    """Average-pool shortcut of binary patch merging (DIDBSwin).

    Input: tokens holding the ``4C`` concatenation of each 2x2
    neighbourhood; output: the 2x2 average of the ``C`` channels
    (:meth:`pool`), then mapped to the output width by a
    :class:`ChannelShortcut` (``channels``).

    Args:
        in_dims: ``C``, the channels of one of the four merged tokens.
        out_dims: output width.
    """

    def __init__(self, in_dims: int, out_dims: int) -> None:
        super().__init__()
        self.in_dims = in_dims
        self.channels = ChannelShortcut(in_dims, out_dims, -1)

    def pool(self, x: Tensor) -> Tensor:
        """``(..., 4C)`` -> ``(..., C)``: the mean of the four tokens."""
        return x.view(*x.shape[:-1], 4, self.in_dims).mean(dim=-2)

    def forward(self, x: Tensor) -> Tensor:
        return self.channels(self.pool(x))


class ConvBypass(nn.Module):
    """FP bypass of :class:`BinaryConvUnit`: average-pool for stride > 1, then
    a :class:`ChannelShortcut` on the channel axis (BiDense CFB bypass)."""

    def __init__(self, in_channels: int, out_channels: int,
                 stride: int = 1) -> None:
        super().__init__()
        self.pool = (nn.AvgPool2d(stride, stride, ceil_mode=True,
                                  count_include_pad=False)
                     if stride > 1 else nn.Identity())
        self.channels = ChannelShortcut(in_channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.channels(self.pool(x))
