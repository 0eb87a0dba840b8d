"""Binary feed-forward network of the DIDB transformer blocks."""
from typing import Optional, Tuple

import torch
import torch.nn as nn

from mmseg_didb.binary.layers import BinaryLinearUnit
from mmseg_didb.binary.presets import BinaryPreset, expect_preset
from mmseg_didb.binary.rprelu import TokenGrid

__all__ = ['BinaryMlp']


class BinaryMlp(nn.Module):
    """Two binary linear units ``fc1 -> fc2`` (timm ``Mlp`` topology).

    Each unit is ``act(norm(BinaryLinear(q(x))) + shortcut(x))`` (docs/method.md,
    section 2); ``fc1`` widens (its shortcut repeats channels) and ``fc2``
    narrows (its shortcut averages channel groups), as in BinaryViT (Le & Li,
    CVPRW 2023). The unit activation (RPReLU / Token RPReLU) is the
    non-linearity of binary presets; with ``preset='fp'`` the units are plain
    linears with GELU between them, exactly timm's ``Mlp``.

    Args:
        in_features: Input channels.
        hidden_features: Hidden channels (default ``in_features``).
        preset: The model's resolved :class:`BinaryPreset`.
        grid: Reference :class:`~mmseg_didb.binary.rprelu.TokenGrid` of the
            Token RPReLU terms.
        out_features: Output channels (default ``in_features``).
        drop: Dropout after the activation and after ``fc2``.
        bias: Bias in both linears.
    """

    def __init__(self,
                 in_features: int,
                 hidden_features: Optional[int] = None,
                 preset: Optional[BinaryPreset] = None,
                 grid: Optional[TokenGrid] = None,
                 out_features: Optional[int] = None,
                 drop: float = 0.,
                 bias: bool = True) -> None:
        super().__init__()
        preset = expect_preset(preset, 'BinaryMlp')
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = BinaryLinearUnit(in_features, hidden_features, preset,
                                    bias=bias, grid=grid)
        # binary units carry their own activation; fp keeps timm's GELU
        self.act = nn.Identity() if preset.unit else nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = BinaryLinearUnit(hidden_features, out_features, preset,
                                    bias=bias, grid=grid)
        self.drop2 = nn.Dropout(drop)

    def forward(self,
                x: torch.Tensor,
                hw: Optional[Tuple[int, int]] = None) -> torch.Tensor:
        """``x``: ``(B, N, C)``; ``hw``: token grid (needed by Token RPReLU)."""
        x = self.drop1(self.act(self.fc1(x, hw)))
        return self.drop2(self.fc2(x, hw))
