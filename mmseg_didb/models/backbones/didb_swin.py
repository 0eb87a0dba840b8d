"""DIDBSwin: a fully binary Swin Transformer backbone for mmseg.

Binary window attention with HFSC, binarized attention probabilities and DIBA
(:class:`~mmseg_didb.models.layers.DIDBAttention`), binary MLPs and binary
patch merging with an average-pool shortcut; FP patch-embedding stem, FP
LayerNorms, FP relative position bias and FP output norms (DIDB-ViT, arXiv
2507.02222; docs/method.md). ``preset='fp'`` is exactly the timm /
official Swin Transformer (Liu et al., ICCV 2021).
"""
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmengine.model.weight_init import trunc_normal_

from mmseg.registry import MODELS
from mmseg_didb.binary.layers import BinaryLinearUnit
from mmseg_didb.binary.shortcuts import MergeShortcut
from mmseg_didb.binary.presets import BinaryPreset, expect_preset
from mmseg_didb.binary.rprelu import TokenGrid
from ..layers import DIDBAttention, DIDBBlock, window_attention_mask
from ..utils.swin_convert import convert_swin_state_dict
from .base import DIDBBackbone

__all__ = ['DIDBSwin', 'DIDBWindowAttention', 'BinaryPatchMerging',
           'DIDBSwinStage', 'MergeShortcut', 'window_and_shift',
           'relative_position_index']

Pair = Tuple[int, int]

CHECKPOINT_HINT = (
    'Use an ImageNet-pretrained Swin of the same arch (timm '
    "'swin_tiny_patch4_window7_224' saved with torch.save(model.state_dict(), "
    '...), an official Microsoft Swin release, or an mmseg/mmpretrain Swin '
    'checkpoint), optionally normalised with '
    '`python tools/convert_pretrained.py SRC DST`, and set its local path in '
    "the config: model.backbone.init_cfg=dict(type='Pretrained', "
    "checkpoint='pretrain/swin_tiny_patch4_window7_224.pth').")


def window_and_shift(hw: Sequence[int], window_size: Pair) -> Tuple[Pair, Pair]:
    """Window and shift for a ``hw`` map, per dimension, as official / timm Swin.

    A dimension no larger than the window uses one window of its own size and
    no shift (mmseg's Swin always pads and shifts instead).
    """
    win = tuple(min(s, w) for s, w in zip(hw, window_size))
    shift = tuple(0 if s <= w else w // 2 for s, w in zip(hw, window_size))
    return win, shift


def relative_position_index(window: Pair, table_window: Pair) -> torch.Tensor:
    """Index ``(N, N)`` into a relative-position table built for ``table_window``.

    For ``window == table_window`` this is Swin's index; a smaller window (a
    stage smaller than the window) reads the sub-table of its offsets.
    """
    (wh, ww), (th, tw) = window, table_window
    coords = torch.stack(torch.meshgrid(torch.arange(wh), torch.arange(ww),
                                        indexing='ij')).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :]
    return (rel[0] + th - 1) * (2 * tw - 1) + (rel[1] + tw - 1)


class DIDBWindowAttention(DIDBAttention):
    """:class:`DIDBAttention` with Swin's FP relative position bias table.

    Args:
        window_size: Window the table is built for (``(2wh-1)(2ww-1)`` rows).
        *args, **kwargs: See :class:`DIDBAttention`.
    """

    def __init__(self, *args, window_size: Union[int, Pair] = 7,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        ws = (window_size, window_size) if isinstance(window_size, int) \
            else tuple(window_size)
        self.window_size = ws
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * ws[0] - 1) * (2 * ws[1] - 1), self.num_heads))
        trunc_normal_(self.relative_position_bias_table, std=.02)
        self._index_cache: Dict[Tuple, torch.Tensor] = {}

    def rel_pos_bias(self, window: Pair) -> torch.Tensor:
        """FP bias ``(num_heads, N, N)`` for a (possibly clamped) window."""
        key = (tuple(window), self.relative_position_bias_table.device)
        if key not in self._index_cache:
            self._index_cache[key] = relative_position_index(
                window, self.window_size).to(key[1])
        idx = self._index_cache[key]
        n = idx.shape[0]
        bias = self.relative_position_bias_table[idx.view(-1)].view(n, n, -1)
        return bias.permute(2, 0, 1).contiguous()

    def forward(self, x: torch.Tensor, hw: Pair,
                window_size: Optional[Pair] = None, shift_size: Pair = (0, 0),
                rel_pos_bias: Optional[torch.Tensor] = None,
                attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        window_size = tuple(window_size or self.window_size)
        if rel_pos_bias is None:
            rel_pos_bias = self.rel_pos_bias(window_size)
        return super().forward(x, hw, window_size, shift_size, rel_pos_bias,
                               attn_mask)


class BinaryPatchMerging(nn.Module):
    """Swin patch merging (2x2 concat -> FP LayerNorm -> binary linear unit).

    The concatenation order equals official / timm Swin, so their weights load
    unchanged. For binary presets the ``reduction`` unit's FP shortcut is the
    2x2 average pool of the input (:class:`MergeShortcut`); with ``'fp'`` it is
    exactly timm's ``PatchMerging``. Odd sizes are zero-padded right/bottom.

    Args:
        in_dims: Input channels ``C``.
        out_dims: Output channels (``2C`` in Swin).
        preset: The model's resolved :class:`BinaryPreset`.
        grid: Reference :class:`TokenGrid` of the output tokens.
    """

    def __init__(self, in_dims: int, out_dims: int, preset: BinaryPreset,
                 grid: Optional[TokenGrid] = None) -> None:
        super().__init__()
        preset = expect_preset(preset, 'BinaryPatchMerging')
        self.in_dims = in_dims
        self.out_dims = out_dims
        self.norm = nn.LayerNorm(4 * in_dims)
        self.reduction = BinaryLinearUnit(4 * in_dims, out_dims, preset,
                                          bias=False, grid=grid)
        if self.reduction.shortcut is not None:
            self.reduction.shortcut = MergeShortcut(in_dims, out_dims)

    def forward(self, x: torch.Tensor, hw: Pair) -> Tuple[torch.Tensor, Pair]:
        B, _, C = x.shape
        H, W = hw
        x = x.view(B, H, W, C)
        if H % 2 or W % 2:
            x = nn.functional.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        H2, W2 = (H + 1) // 2, (W + 1) // 2
        # (h, w, C) blocks ordered (0,0), (1,0), (0,1), (1,1) like official Swin
        x = x.reshape(B, H2, 2, W2, 2, C).permute(0, 1, 3, 4, 2, 5)
        x = x.reshape(B, H2 * W2, 4 * C)
        return self.reduction(self.norm(x), (H2, W2)), (H2, W2)


class DIDBSwinStage(nn.Module):
    """Optional patch merging followed by ``depth`` (shifted) window blocks.

    Args:
        in_dims: Channels entering the stage.
        out_dims: Channels of the blocks.
        depth: Blocks.
        num_heads: Heads.
        window_size: Window of the attention.
        downsample: Patch merging at the start (timm layout).
        preset: The model's resolved :class:`BinaryPreset`.
        grid: Token grid of this stage at the pretraining size.
        drop_path: Per-block stochastic depth rates.
        attn_cfg: Extra :class:`DIDBWindowAttention` arguments.
        block_kwargs: Remaining :class:`DIDBBlock` arguments.
    """

    def __init__(self, in_dims: int, out_dims: int, depth: int,
                 num_heads: int, window_size: Pair, downsample: bool,
                 preset: BinaryPreset, grid: TokenGrid,
                 drop_path: Sequence[float],
                 attn_cfg: Optional[dict] = None, **block_kwargs) -> None:
        super().__init__()
        self.window_size = window_size
        win, _ = window_and_shift(grid.size, window_size)
        attn_tokens = win[0] * win[1]  # keys per query at the reference size
        self.downsample = (BinaryPatchMerging(in_dims, out_dims, preset,
                                              grid)
                           if downsample else nn.Identity())
        self.blocks = nn.ModuleList([
            DIDBBlock(out_dims, num_heads, preset=preset,
                      drop_path=drop_path[i], grid=grid,
                      attn_layer=DIDBWindowAttention,
                      attn_kwargs=dict(window_size=window_size,
                                       attn_tokens=attn_tokens,
                                       **(attn_cfg or {})),
                      **block_kwargs) for i in range(depth)
        ])

    def forward(self, x: torch.Tensor, hw: Pair) -> Tuple[torch.Tensor, Pair]:
        if isinstance(self.downsample, BinaryPatchMerging):
            x, hw = self.downsample(x, hw)
        win, shift = window_and_shift(hw, self.window_size)
        masks = {}
        for i, block in enumerate(self.blocks):
            s = shift if i % 2 else (0, 0)
            if s not in masks:
                masks[s] = window_attention_mask(hw, win, s, x.device, x.dtype)
            x = block(x, hw, window_size=win, shift_size=s,
                      attn_mask=masks[s])
        return x, hw


#: Architectures (mmpretrain ``SwinTransformer.arch_zoo``).
ARCH_ZOO: Dict[str, dict] = {
    **dict.fromkeys(['t', 'tiny'], dict(embed_dims=96, depths=(2, 2, 6, 2),
                                        num_heads=(3, 6, 12, 24))),
    **dict.fromkeys(['s', 'small'], dict(embed_dims=96, depths=(2, 2, 18, 2),
                                         num_heads=(3, 6, 12, 24))),
    **dict.fromkeys(['b', 'base'], dict(embed_dims=128, depths=(2, 2, 18, 2),
                                        num_heads=(4, 8, 16, 32))),
    **dict.fromkeys(['l', 'large'], dict(embed_dims=192, depths=(2, 2, 18, 2),
                                         num_heads=(6, 12, 24, 48))),
}


@MODELS.register_module()
class DIDBSwin(DIDBBackbone):
    """Binary Swin Transformer backbone (DIDB-ViT applied to Swin).

    Outputs, like mmseg's ``SwinTransformer``, a list of ``(B, C_i, H_i, W_i)``
    maps for ``out_indices`` (stage outputs before the next patch merging),
    each through an FP LayerNorm ``norm{i}``. Any input size works: the stem
    pads to a multiple of the patch size, windows pad to a multiple of the
    window (padding keys are masked), patch merging pads odd maps.

    Differences to mmseg's Swin (same as official / timm Swin): a stage no
    larger than the window uses one window of its size without shift; module
    names follow timm (patch merging at the start of stage ``i + 1``).

    Checkpoints: ``init_cfg=dict(type='Pretrained', checkpoint=PATH,
    prefix=None | 'backbone.')`` loads timm, official Microsoft,
    mmseg/mmpretrain or the plugin's own Swin checkpoints; the conversion runs
    in a load-state-dict pre-hook, so ``load_state_dict`` accepts every
    format too (see :mod:`mmseg_didb.models.utils.swin_convert` for how the
    DIDB-only parameters are initialised). Loading fails with an error naming
    the missing / unexpected keys.

    Args:
        arch: 'tiny' | 'small' | 'base' | 'large' (or 't'/'s'/'b'/'l'), or a
            dict with ``embed_dims``, ``depths``, ``num_heads``; the explicit
            ``embed_dims``/``depths``/``num_heads`` override it.
        preset: Binary preset ('fp', 'bnn', 'react', 'bit', 'binaryvit',
            'didb') or a :class:`BinaryPreset` / dict.
        preset_overrides: Per-component overrides, e.g. ``dict(hfsc=False,
            diba_local=False, token_rprelu=False)``.
        embed_dims: Channels of stage 0.
        depths: Blocks per stage.
        num_heads: Heads per stage.
        window_size: Attention window.
        mlp_ratio: MLP width ratio.
        qkv_bias: Bias in q/k/v.
        patch_size: Stem patch size (= stride).
        in_channels: Image channels.
        drop_rate: Dropout after the stem, in attention ``proj`` and MLPs.
        attn_drop_rate: Dropout on attention probabilities.
        drop_path_rate: Stochastic depth, linearly increasing over blocks.
        out_indices: Stages to output (negative: from the last).
        attn_cfg: Extra arguments of every attention (start values of the
            DIDB scalars: ``prob_scale_init``, ``diba_scale_init``,
            ``diba_local_init``; see :class:`DIDBAttention`).
        pretrain_img_size: Pretraining image size; sets the reference grid of
            the Token RPReLU maps.
        with_cp: Gradient checkpointing per block.
        frozen_stages: Freeze the stem (>= 0) and stages ``< frozen_stages``
            with their output norms (mmseg semantics).
        init_cfg: ``dict(type='Pretrained', checkpoint=..., prefix=...)`` or
            an mmengine init config.
        pretrained: Deprecated alias of a Pretrained ``init_cfg``.
        strides, patch_norm, qk_scale, use_abs_pos_embed, act_cfg, norm_cfg:
            accepted for mmseg ``SwinTransformer`` config compatibility; only
            the values of standard Swin are supported.
        **overrides: Preset fields given directly (same as
            ``preset_overrides``).
    """
    arch_zoo = ARCH_ZOO
    arch_keys = ('embed_dims', 'depths', 'num_heads')
    checkpoint_hint = CHECKPOINT_HINT

    def __init__(self,
                 arch: Union[str, dict] = 'tiny',
                 preset: Union[str, BinaryPreset, dict] = 'didb',
                 preset_overrides: Optional[dict] = None,
                 embed_dims: Optional[int] = None,
                 depths: Optional[Sequence[int]] = None,
                 num_heads: Optional[Sequence[int]] = None,
                 window_size: int = 7,
                 mlp_ratio: float = 4.,
                 qkv_bias: bool = True,
                 patch_size: int = 4,
                 in_channels: int = 3,
                 drop_rate: float = 0.,
                 attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0.1,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 attn_cfg: Optional[dict] = None,
                 pretrain_img_size: Union[int, Pair] = 224,
                 with_cp: bool = False,
                 frozen_stages: int = -1,
                 init_cfg: Optional[dict] = None,
                 pretrained: Optional[str] = None,
                 strides: Optional[Sequence[int]] = None,
                 patch_norm: bool = True,
                 qk_scale: Optional[float] = None,
                 use_abs_pos_embed: bool = False,
                 act_cfg: Optional[dict] = None,
                 norm_cfg: Optional[dict] = None,
                 **overrides) -> None:
        super().__init__(init_cfg, pretrained)
        self._check_mmseg_compat({
            f'strides={strides} (only (patch_size, 2, 2, 2))':
            strides is not None
            and tuple(strides) != (patch_size, 2, 2, 2)[:len(strides)],
            'patch_norm=False': not patch_norm,
            f'qk_scale={qk_scale} (head_dim ** -0.5 is used)':
            qk_scale is not None,
            'use_abs_pos_embed=True': use_abs_pos_embed,
            f'act_cfg={act_cfg} (the FP MLP uses GELU)':
            act_cfg is not None and act_cfg.get('type') != 'GELU',
            f'norm_cfg={norm_cfg} (LayerNorm is used)':
            norm_cfg is not None and norm_cfg.get('type') != 'LN',
        })
        spec = self._resolve_arch(arch, embed_dims=embed_dims, depths=depths,
                                  num_heads=num_heads)
        embed_dims = spec['embed_dims']
        depths, num_heads = tuple(spec['depths']), tuple(spec['num_heads'])
        if len(depths) != len(num_heads):
            raise ValueError(f'depths {depths} and num_heads {num_heads} must '
                             'have one entry per stage')
        self.preset = self._resolve_preset(preset, preset_overrides,
                                           overrides)
        self.num_layers = len(depths)
        self.out_indices = self._resolve_out_indices(out_indices,
                                                     self.num_layers)
        self.frozen_stages = frozen_stages
        self.window_size = (window_size, window_size) \
            if isinstance(window_size, int) else tuple(window_size)
        if isinstance(pretrain_img_size, int):
            pretrain_img_size = (pretrain_img_size, pretrain_img_size)
        self.pretrain_img_size = tuple(pretrain_img_size)
        self.num_features = [int(embed_dims * 2**i)
                             for i in range(self.num_layers)]

        self._build_patch_embed(self.pretrain_img_size, patch_size,
                                in_channels, embed_dims, norm=True)
        self.drop_after_pos = nn.Dropout(drop_rate)
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        grid = tuple(math.ceil(s / patch_size) for s in self.pretrain_img_size)
        layers = []
        for i in range(self.num_layers):
            if i > 0:
                grid = tuple((g + 1) // 2 for g in grid)
            layers.append(DIDBSwinStage(
                in_dims=self.num_features[max(i - 1, 0)],
                out_dims=self.num_features[i], depth=depths[i],
                num_heads=num_heads[i], window_size=self.window_size,
                downsample=i > 0, preset=self.preset, grid=TokenGrid(grid),
                drop_path=dpr[sum(depths[:i]):sum(depths[:i + 1])],
                mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop=drop_rate,
                attn_drop=attn_drop_rate, with_cp=with_cp,
                attn_cfg=attn_cfg))
        self.layers = nn.ModuleList(layers)
        for i in self.out_indices:
            self.add_module(f'norm{i}', nn.LayerNorm(self.num_features[i]))
        self._register_load_state_dict_pre_hook(self._convert_checkpoint)

    # ----------------------------------------------------------- checkpoints
    def _num_heads_at(self, attn_key: str) -> int:
        return self.get_submodule(attn_key).num_heads

    def _convert_state_dict(self, own: dict) -> dict:
        """Convert timm / official / mmseg Swin keys (pre-hook of the mixin)."""
        converted, report = convert_swin_state_dict(
            own, self.state_dict(), self._num_heads_at)
        self._log_conversion(report)
        return converted

    # --------------------------------------------------------------- training
    def train(self, mode: bool = True) -> 'DIDBSwin':
        super().train(mode)
        self._freeze_stages()
        return self

    def _freeze_stages(self) -> None:
        """Freeze like mmseg: stage ``k`` includes the patch merging after it."""
        frozen: List[nn.Module] = []
        if self.frozen_stages >= 0:
            frozen += [self.patch_embed, self.drop_after_pos]
        for i in range(min(self.frozen_stages, self.num_layers)):
            frozen.append(self.layers[i].blocks)
            if i + 1 < self.num_layers:
                frozen.append(self.layers[i + 1].downsample)
            if i in self.out_indices:
                frozen.append(getattr(self, f'norm{i}'))
        for m in frozen:
            m.eval()
            for p in m.parameters():
                p.requires_grad = False

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """``(B, 3, H, W)`` -> tuple of ``(B, C_i, H_i, W_i)`` for
        ``out_indices`` (a tuple, as OpenMMLab necks expect)."""
        x, hw = self._embed_patches(x)
        x = self.drop_after_pos(x)
        outs = []
        for i, stage in enumerate(self.layers):
            x, hw = stage(x, hw)
            if i in self.out_indices:
                out = getattr(self, f'norm{i}')(x)
                outs.append(out.view(out.shape[0], hw[0], hw[1], -1).permute(
                    0, 3, 1, 2).contiguous())
        return tuple(outs)
