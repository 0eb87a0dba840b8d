"""Channel-wise PReLU, RPReLU (ReActNet) and the per-token Token RPReLU (DIDB).

* :class:`ChannelPReLU`: PReLU on an arbitrary channel axis (``nn.PReLU`` only
  handles axis 1, tokens are (B, N, C)).
* :class:`RPReLU`: ``f(x) = PReLU_c(x - gamma_c) + zeta_c`` (ReActNet, Liu et
  al. ECCV 2020, Eq. 4).
* :class:`TokenRPReLU`: the DIDB-ViT "improved RPReLU" (Gao et al. 2025,
  arXiv 2507.02222) with per-token terms
  ``f(x_nc) = PReLU_c(x_nc - gamma_c - gamma'_n) + zeta_c + zeta'_n``.
"""
import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .exact import mean_exact

__all__ = [
    'ChannelPReLU', 'RPReLU', 'TokenGrid', 'TokenRPReLU', 'resize_token_map'
]


def _channel_view(p: Tensor, x: Tensor, channel_dim: int) -> Tensor:
    dim = channel_dim % x.dim()
    if x.shape[dim] != p.numel():
        raise ValueError(f'input has {x.shape[dim]} channels on dim '
                         f'{channel_dim} (shape {tuple(x.shape)}) but the '
                         f'module was built for {p.numel()}')
    shape = [1] * x.dim()
    shape[dim] = p.numel()
    return p.to(x.dtype).reshape(shape)


class ChannelPReLU(nn.Module):
    """PReLU with one slope per channel on ``channel_dim``.

    ``f(x) = x if x >= 0 else slope_c * x`` (He et al. ICCV 2015).

    Args:
        num_channels: number of channels C.
        channel_dim: channel axis (-1 tokens, 1 maps).
        init: initial slope.
    """

    def __init__(self, num_channels: int, channel_dim: int = -1,
                 init: float = 0.25) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.channel_dim = channel_dim
        self.slope = nn.Parameter(torch.full((num_channels, ), float(init)))

    def forward(self, x: Tensor) -> Tensor:
        dim = self.channel_dim % x.dim()
        if dim == x.dim() - 1 and x.shape[dim] == self.num_channels:
            # channels last (tokens): a 2-D view puts them on dim 1
            shape = x.shape
            return F.prelu(x.reshape(-1, shape[-1]),
                           self.slope.to(x.dtype)).view(shape)
        if dim == 1 and x.shape[1] == self.num_channels:
            return F.prelu(x, self.slope.to(x.dtype))
        slope = _channel_view(self.slope, x, self.channel_dim)
        return torch.where(x >= 0, x, slope * x)

    def extra_repr(self) -> str:
        return f'{self.num_channels}, channel_dim={self.channel_dim}'


class RPReLU(ChannelPReLU):
    """ReActNet RPReLU: ``PReLU_c(x - gamma_c) + zeta_c``.

    ReActNet (Liu et al. ECCV 2020), Eq. 4; ``gamma`` and ``zeta`` init 0,
    PReLU slope init 0.25.

    Args:
        num_channels: number of channels C.
        channel_dim: channel axis (-1 tokens, 1 maps).
        init: initial PReLU slope.
    """

    def __init__(self, num_channels: int, channel_dim: int = -1,
                 init: float = 0.25) -> None:
        super().__init__(num_channels, channel_dim, init)
        self.gamma = nn.Parameter(torch.zeros(num_channels))
        self.zeta = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        cd = self.channel_dim
        y = x - _channel_view(self.gamma, x, cd)
        return super().forward(y) + _channel_view(self.zeta, x, cd)


@dataclass(frozen=True)
class TokenGrid:
    """Layout of a token sequence ``(B, N, C)``: ``num_extra`` leading tokens
    without a grid position (a ViT's CLS), then an ``H x W`` grid, row-major.

    A model builds one per stage, for its grid at the pretraining size (the
    *reference* grid, which sizes per-token parameters such as Token RPReLU
    maps and position embeddings), and passes it once to the layers it
    builds; forwards receive the actual ``hw`` and the parameters are resized
    to it with :func:`resize_token_map`.

    Args:
        size: ``(H, W)`` of the reference grid.
        num_extra: Leading tokens without a grid position.
    """
    size: Tuple[int, int]
    num_extra: int = 0

    def __post_init__(self) -> None:
        size = tuple(int(s) for s in self.size)
        if len(size) != 2 or min(size) < 1 or int(self.num_extra) < 0:
            raise ValueError(
                f'TokenGrid needs size=(H, W) with H, W >= 1 and num_extra '
                f'>= 0, got size={self.size!r}, num_extra={self.num_extra!r}')
        object.__setattr__(self, 'size', size)
        object.__setattr__(self, 'num_extra', int(self.num_extra))

    @property
    def num_tokens(self) -> int:
        """Sequence length ``num_extra + H * W``."""
        return self.num_extra + self.size[0] * self.size[1]

    @classmethod
    def of(cls, grid: Optional['GridLike'],
           num_extra: int = 0) -> Optional['TokenGrid']:
        """``grid`` itself, the grid of an ``(H, W)`` pair with
        ``num_extra`` extra tokens, or None."""
        if grid is None or isinstance(grid, TokenGrid):
            return grid
        return cls(tuple(grid), num_extra)


GridLike = Union[TokenGrid, Sequence[int]]


def resize_token_map(tokens: Tensor, grid: GridLike, hw: Sequence[int],
                     mode: str = 'bilinear') -> Tensor:
    """Resize a token map (1, extra + Hr*Wr, D) on ``grid`` to
    (1, extra + H*W, D).

    The one resize of token-grid parameters, used in forward (Token RPReLU
    maps, position embeddings) and at load time (maps of another grid):
    like mmseg's ``resize_pos_embed``, the grid part is interpolated
    (``align_corners=False``, in float32), the leading extra tokens (CLS) are
    kept; the same grid returns ``tokens`` itself.

    Args:
        tokens: The map, ``grid.num_tokens`` rows.
        grid: Its :class:`TokenGrid` (a pair: no extra tokens).
        hw: The grid to resize to.
        mode: ``F.interpolate`` mode.

    Raises:
        ValueError: if ``tokens`` does not hold ``grid.num_tokens`` rows.
    """
    grid = TokenGrid.of(grid)
    (hr, wr), extra_n = grid.size, grid.num_extra
    h, w = hw
    if tokens.shape[1] != grid.num_tokens:
        raise ValueError(
            f'token map of shape {tuple(tokens.shape)} does not hold '
            f'{extra_n} extra token(s) plus a {hr}x{wr} grid')
    if (hr, wr) == (h, w):
        return tokens
    extra, cells = tokens[:, :extra_n], tokens[:, extra_n:]
    d = cells.shape[-1]
    cells = cells.reshape(1, hr, wr, d).permute(0, 3, 1, 2)
    kwargs = {} if mode == 'nearest' else dict(align_corners=False)
    cells = F.interpolate(cells.float(), size=(h, w), mode=mode,
                          **kwargs).to(tokens.dtype)
    cells = cells.permute(0, 2, 3, 1).reshape(1, h * w, d)
    return torch.cat([extra, cells], dim=1)


class TokenRPReLU(RPReLU):
    """Token RPReLU, the DIDB-ViT "improved RPReLU" with per-token terms.

    ``f(x_nc) = PReLU_c(x_nc - gamma_c - gamma'_n) + zeta_c + zeta'_n``
    (DIDB-ViT, Gao et al. 2025, arXiv 2507.02222, improved RPReLU).

    ``mode='static'``: gamma', zeta' are learnable maps ``token_gamma``,
    ``token_zeta`` of shape (1, extra + Hr*Wr, 1) on a reference token grid
    (the pretraining grid of the stage), resized bilinearly to the actual grid
    like a position embedding (extra tokens such as CLS are not resized);
    zero-init, so the module starts as :class:`RPReLU`.

    ``mode='dynamic'`` (reconstruction; the paper only says "per-token
    adjustments"): ``gamma'_nc = kg_c * mean_c(x_n)`` and
    ``zeta'_nc = kz_c * mean_c(x_n)`` with per-channel ``dyn_gamma`` (kg) and
    ``dyn_zeta`` (kz), zero-init; no reference grid is needed.

    Args:
        num_channels: number of channels C.
        grid: :class:`TokenGrid` of the per-token maps (static mode; a pair
            ``(H, W)`` means no extra tokens). Dynamic mode needs none.
        mode: ``'static'`` or ``'dynamic'``.
        init: initial PReLU slope.
    """

    def __init__(self, num_channels: int,
                 grid: Optional[GridLike] = None,
                 mode: str = 'static', init: float = 0.25) -> None:
        super().__init__(num_channels, channel_dim=-1, init=init)
        if mode not in ('static', 'dynamic'):
            raise ValueError(f"TokenRPReLU mode must be 'static' or "
                             f"'dynamic', got {mode!r}")
        self.mode = mode
        self.grid = TokenGrid.of(grid)
        if mode == 'static':
            if self.grid is None:
                raise ValueError('TokenRPReLU(mode="static") needs grid='
                                 'TokenGrid((H_ref, W_ref), num_extra)')
            n = self.grid.num_tokens
            self.token_gamma = nn.Parameter(torch.zeros(1, n, 1))
            self.token_zeta = nn.Parameter(torch.zeros(1, n, 1))
        else:
            self.dyn_gamma = nn.Parameter(torch.zeros(num_channels))
            self.dyn_zeta = nn.Parameter(torch.zeros(num_channels))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Maps saved on another (square) reference grid, e.g. a backbone
        # pretrained at 224 loaded at pretrain_img_size=512, are resized like
        # a position embedding; anything else falls through to the usual
        # shape check.
        if self.mode == 'static':
            extra = self.grid.num_extra
            for name in ('token_gamma', 'token_zeta'):
                src = state_dict.get(prefix + name)
                own = getattr(self, name)
                if src is None or src.dim() != 3 or src.shape == own.shape:
                    continue
                side = math.isqrt(src.shape[1] - extra)
                if side * side == src.shape[1] - extra:
                    state_dict[prefix + name] = resize_token_map(
                        src, TokenGrid((side, side), extra), self.grid.size)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def token_maps(self, hw: Optional[Sequence[int]],
                   num_tokens: int) -> Tuple[Tensor, Tensor]:
        """Static per-token (gamma', zeta') at grid ``hw``: (1, N, 1) each."""
        assert self.grid is not None
        if hw is None:
            if num_tokens != self.grid.num_tokens:
                raise ValueError(
                    f'TokenRPReLU got {num_tokens} tokens but its reference '
                    f'{self.grid} has {self.grid.num_tokens}; pass hw=(H, W)')
            return self.token_gamma, self.token_zeta
        h, w = int(hw[0]), int(hw[1])
        if num_tokens != self.grid.num_extra + h * w:
            raise ValueError(f'TokenRPReLU got {num_tokens} tokens, expected '
                             f'{self.grid.num_extra} + {h}*{w} for hw={hw}')
        both = torch.cat([self.token_gamma, self.token_zeta], dim=-1)
        both = resize_token_map(both, self.grid, (h, w))
        return both[..., :1], both[..., 1:]

    def forward(self, x: Tensor,
                hw: Optional[Sequence[int]] = None) -> Tensor:
        """Apply to tokens ``x`` (B, N, C); ``hw`` is the actual token grid."""
        if x.dim() != 3:
            raise ValueError('TokenRPReLU expects tokens (B, N, C), got '
                             f'shape {tuple(x.shape)}')
        if self.mode == 'static':
            tg, tz = self.token_maps(hw, x.shape[1])
            tg, tz = tg.to(x.dtype), tz.to(x.dtype)
        else:
            m = mean_exact(x, -1, keepdim=True)
            tg = m * self.dyn_gamma.to(x.dtype)
            tz = m * self.dyn_zeta.to(x.dtype)
        return super().forward(x - tg) + tz

    def extra_repr(self) -> str:
        return f'{self.num_channels}, mode={self.mode}, grid={self.grid}'
