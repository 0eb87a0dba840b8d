"""Pre-norm transformer block built from DIDB attention and a binary MLP."""
from typing import Any, Optional, Tuple, Type

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from timm.layers import DropPath

from mmseg_didb.binary.presets import BinaryPreset, expect_preset
from mmseg_didb.binary.rprelu import TokenGrid
from .binary_mlp import BinaryMlp
from .didb_attention import DIDBAttention

__all__ = ['DIDBBlock']


class DIDBBlock(nn.Module):
    """``x + attn(norm1(x)); x + mlp(norm2(x))`` with FP LayerNorms.

    The same topology (and submodule names ``norm1, attn, norm2, mlp``) as
    timm's Swin and ViT blocks, so FP checkpoints map one to one. Keyword
    arguments of :meth:`forward` beyond ``hw`` go to the attention (window,
    shift, relative position bias, mask).

    Args:
        embed_dims: Channels.
        num_heads: Attention heads.
        mlp_ratio: Hidden width of the MLP relative to ``embed_dims``.
        preset: The model's resolved :class:`BinaryPreset`.
        qkv_bias: Bias in q/k/v.
        drop: Dropout after ``proj`` and inside the MLP.
        attn_drop: Dropout on attention probabilities.
        drop_path: Stochastic depth rate of both residual branches.
        grid: The stage's reference
            :class:`~mmseg_didb.binary.rprelu.TokenGrid` (Token RPReLU maps,
            extra tokens).
        norm_layer: Norm class of ``norm1``/``norm2`` (FP).
        attn_layer: Attention class (a :class:`DIDBAttention` subclass).
        attn_kwargs: Extra constructor arguments of ``attn_layer``.
        with_cp: Gradient checkpointing of the whole block.
    """

    def __init__(self,
                 embed_dims: int,
                 num_heads: int,
                 mlp_ratio: float = 4.,
                 preset: Optional[BinaryPreset] = None,
                 qkv_bias: bool = True,
                 drop: float = 0.,
                 attn_drop: float = 0.,
                 drop_path: float = 0.,
                 grid: Optional[TokenGrid] = None,
                 norm_layer: Type[nn.Module] = nn.LayerNorm,
                 attn_layer: Type[DIDBAttention] = DIDBAttention,
                 attn_kwargs: Optional[dict] = None,
                 with_cp: bool = False) -> None:
        super().__init__()
        preset = expect_preset(preset, 'DIDBBlock')
        self.with_cp = with_cp
        self.norm1 = norm_layer(embed_dims)
        self.attn = attn_layer(
            embed_dims, num_heads, preset, qkv_bias=qkv_bias,
            attn_drop=attn_drop, proj_drop=drop, grid=grid,
            **(attn_kwargs or {}))
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(embed_dims)
        self.mlp = BinaryMlp(
            embed_dims, int(embed_dims * mlp_ratio), preset, grid=grid,
            drop=drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def _forward(self, x: torch.Tensor, hw: Tuple[int, int],
                 attn_kwargs: dict) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x), hw, **attn_kwargs))
        return x + self.drop_path2(self.mlp(self.norm2(x), hw))

    def forward(self, x: torch.Tensor, hw: Tuple[int, int],
                **attn_kwargs: Any) -> torch.Tensor:
        """``x``: ``(B, N, C)`` tokens on grid ``hw`` (+ extra tokens)."""
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._forward, x, hw, attn_kwargs,
                                 use_reentrant=False)
        return self._forward(x, hw, attn_kwargs)
