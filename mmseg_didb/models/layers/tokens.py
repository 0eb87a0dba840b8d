"""Token-map layout shared by the DIDB attention parts.

Tokens are ``(B, E + H*W, C)``: ``E`` leading extra tokens (ViT CLS) without
a grid position, then an ``H x W`` grid in row-major order. The HFSC band
split and the DIBA local term work on the grid part (:func:`split_token_grid`,
:func:`join_token_grid`); Swin attention works on (shifted, padded) windows of
it (:func:`to_windows`, :func:`from_windows`, :func:`window_attention_mask`).
"""
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = [
    'to_pair', 'split_token_grid', 'join_token_grid', 'split_heads',
    'merge_heads', 'window_partition', 'window_reverse', 'to_windows',
    'from_windows', 'window_attention_mask'
]

_MASK_VALUE = -100.0  # same finite value as official Swin / timm / mmseg


def to_pair(v: Union[int, Sequence[int]]) -> Tuple[int, int]:
    """``v`` as a pair of ints (an int is repeated)."""
    if isinstance(v, int):
        return v, v
    v = tuple(int(i) for i in v)
    if len(v) != 2:
        raise ValueError(f'expected an int or a pair of ints, got {v}')
    return v


def split_token_grid(x: torch.Tensor, hw: Tuple[int, int],
                     num_extra_tokens: int = 0
                     ) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(B, E + H*W, C)`` -> extra tokens ``(B, E, C)``, map ``(B, C, H, W)``.

    Raises:
        ValueError: if the token count is not ``E + H * W``.
    """
    E = num_extra_tokens
    B, N, C = x.shape
    H, W = hw
    if N != E + H * W:
        raise ValueError(f'got {N} tokens but hw={tuple(hw)} and '
                         f'num_extra_tokens={E} need {E + H * W}')
    return x[:, :E], x[:, E:].transpose(1, 2).reshape(B, C, H, W)


def join_token_grid(extra: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`split_token_grid`."""
    tokens = grid.flatten(2).transpose(1, 2)
    return torch.cat([extra, tokens], 1) if extra.shape[1] else tokens


def split_heads(t: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``(B, N, heads * d)`` -> ``(B, heads, N, d)``."""
    B, N, C = t.shape
    return t.view(B, N, num_heads, C // num_heads).transpose(1, 2)


def merge_heads(t: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`split_heads`."""
    B, h, N, d = t.shape
    return t.transpose(1, 2).reshape(B, N, h * d)


def window_partition(x: torch.Tensor,
                     window_size: Tuple[int, int]) -> torch.Tensor:
    """Split ``(B, H, W, C)`` into windows ``(B * nW, wh * ww, C)``.

    ``H`` and ``W`` must be multiples of the window (pad first).
    """
    B, H, W, C = x.shape
    wh, ww = window_size
    x = x.view(B, H // wh, wh, W // ww, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, wh * ww, C)


def window_reverse(windows: torch.Tensor, window_size: Tuple[int, int],
                   H: int, W: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: ``(B * nW, wh * ww, C) -> (B, H, W, C)``."""
    wh, ww = window_size
    C = windows.shape[-1]
    x = windows.view(-1, H // wh, W // ww, wh, ww, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


def _padded(hw: Tuple[int, int], window_size: Tuple[int, int]) -> Tuple[int, int]:
    return tuple(-(-s // w) * w for s, w in zip(hw, window_size))


def to_windows(tokens: torch.Tensor, hw: Tuple[int, int],
               window_size: Tuple[int, int],
               shift_size: Tuple[int, int]) -> torch.Tensor:
    """Tokens ``(B, H*W, C)`` -> zero-pad right/bottom -> cyclic shift -> windows.

    Padding happens before the shift, like mmseg's ``ShiftWindowMSA``.
    """
    B, _, C = tokens.shape
    H, W = hw
    Hp, Wp = _padded(hw, window_size)
    x = tokens.view(B, H, W, C)
    if (Hp, Wp) != (H, W):
        x = F.pad(x, (0, 0, 0, Wp - W, 0, Hp - H))
    if any(shift_size):
        x = torch.roll(x, shifts=(-shift_size[0], -shift_size[1]), dims=(1, 2))
    return window_partition(x, window_size)


def from_windows(windows: torch.Tensor, hw: Tuple[int, int],
                 window_size: Tuple[int, int],
                 shift_size: Tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`to_windows`: windows -> ``(B, H*W, C)``."""
    H, W = hw
    Hp, Wp = _padded(hw, window_size)
    x = window_reverse(windows, window_size, Hp, Wp)
    if any(shift_size):
        x = torch.roll(x, shifts=shift_size, dims=(1, 2))
    x = x[:, :H, :W, :]
    return x.reshape(x.shape[0], H * W, -1)


def window_attention_mask(hw: Tuple[int, int], window_size: Tuple[int, int],
                          shift_size: Tuple[int, int],
                          device: Optional[torch.device] = None,
                          dtype: torch.dtype = torch.float32
                          ) -> Optional[torch.Tensor]:
    """Additive attention mask ``(nW, N, N)`` for (shifted) windows, or None.

    Two kinds of pairs are masked with -100 (the value official Swin uses):
    tokens from different regions of a cyclically shifted window (exactly
    official Swin's SW-MSA mask), and keys that are zero padding added to reach
    a multiple of the window. mmseg and timm let queries attend to padding
    tokens; masking them instead makes the output independent of the padding
    and is identical whenever no padding is needed.
    """
    H, W = hw
    Hp, Wp = _padded(hw, window_size)
    if not any(shift_size) and (Hp, Wp) == (H, W):
        return None
    region = torch.zeros((1, Hp, Wp, 1), device=device)
    if any(shift_size):
        cnt = 0
        (wh, ww), (sh, sw) = window_size, shift_size
        h_slices = ((0, -wh), (-wh, -sh), (-sh, None)) if sh else ((0, None), )
        w_slices = ((0, -ww), (-ww, -sw), (-sw, None)) if sw else ((0, None), )
        for h0, h1 in h_slices:
            for w0, w1 in w_slices:
                region[:, h0:h1, w0:w1, :] = cnt
                cnt += 1
    pad = torch.zeros((1, Hp, Wp, 1), device=device)
    pad[:, H:, :, :] = 1
    pad[:, :, W:, :] = 1
    if any(shift_size):
        pad = torch.roll(pad, shifts=(-shift_size[0], -shift_size[1]), dims=(1, 2))
    region = window_partition(region, window_size).squeeze(-1)  # nW, N
    pad = window_partition(pad, window_size).squeeze(-1)
    masked = (region.unsqueeze(1) != region.unsqueeze(2)) | (pad.unsqueeze(1) > 0)
    return masked.to(dtype) * _MASK_VALUE
