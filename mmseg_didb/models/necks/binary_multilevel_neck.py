"""BinaryMultiLevelNeck: mmseg's ViT-to-UPerHead neck, binary conv units."""
from typing import List, Optional, Sequence, Union

import torch.nn as nn
from mmcv.cnn import build_activation_layer, build_norm_layer
from mmseg.models.necks import MultiLevelNeck
from mmseg.registry import MODELS

from mmseg_didb.binary.layers import BinaryConvUnit
from mmseg_didb.binary.presets import BinaryPreset, resolve_preset

from ..decode_heads.binary_conv_module import set_unit_checkpointing


@MODELS.register_module()
class BinaryMultiLevelNeck(MultiLevelNeck):
    """mmseg ``MultiLevelNeck`` whose 1x1 lateral and 3x3 output convs are
    binary conv units (BiDense-style: ``act(BN(BinConv(x)) + bypass(x))``).

    The topology (per-level lateral conv, bilinear rescale by ``scales``,
    per-level 3x3 conv) and ``forward`` are mmseg's; only the conv blocks
    differ. The FP bypass of a unit repeats (widening) or group-averages
    (narrowing) channels; a lateral conv whose widths are not multiples of
    each other has no bypass. With ``preset='fp'`` the units are
    conv-BN-ReLU (use mmseg's ``MultiLevelNeck`` for the plain FP neck).

    Args:
        in_channels: Channels of each backbone output.
        out_channels: Channels of every neck output.
        scales: Rescale factor of each level, e.g. ``[4, 2, 1, 0.5]`` for
            ViT ``out_indices=(3, 5, 7, 11)``.
        norm_cfg: Norm after each binary conv. ``None`` uses BatchNorm2d: a
            binary conv needs a norm to restore the activation scale (unlike
            mmseg's FP neck, which has none by default).
        act_cfg: Activation of each unit. ``None`` uses the preset's unit
            activation (RPReLU for most presets).
        preset: Binarization preset (shared table of ``mmseg_didb.binary``).
        preset_overrides: Switch overrides for the preset.
        with_cp: Activation checkpointing of every binary conv unit in
            training.
    """

    def __init__(self,
                 in_channels: List[int],
                 out_channels: int,
                 scales: Sequence[float] = (0.5, 1, 2, 4),
                 norm_cfg: Optional[dict] = None,
                 act_cfg: Optional[dict] = None,
                 preset: Union[str, BinaryPreset, dict] = 'didb',
                 preset_overrides: Optional[dict] = None,
                 with_cp: bool = False) -> None:
        if not isinstance(in_channels, (list, tuple)):
            raise TypeError('in_channels must be a list of ints, one per '
                            f'backbone output, got {in_channels!r}.')
        if len(in_channels) not in (1, len(scales)):
            raise ValueError(f'{len(in_channels)} inputs for {len(scales)} '
                             'scales: give one input or one per scale.')
        # mmseg builds FP ConvModules here; they are replaced just below.
        super().__init__(list(in_channels), out_channels, list(scales),
                         norm_cfg=None, act_cfg=None)
        self.preset = resolve_preset(preset, **(preset_overrides or {}))
        self.norm_cfg = norm_cfg
        self.act_cfg = act_cfg
        self.lateral_convs = nn.ModuleList([
            self._unit(c, out_channels, kernel_size=1, padding=0)
            for c in in_channels
        ])
        self.convs = nn.ModuleList([
            self._unit(out_channels, out_channels, kernel_size=3, padding=1)
            for _ in range(self.num_outs)
        ])
        set_unit_checkpointing(self, with_cp)

    def _unit(self, in_channels: int, out_channels: int, kernel_size: int,
              padding: int) -> BinaryConvUnit:
        norm = build_norm_layer(self.norm_cfg, out_channels)[1] \
            if self.norm_cfg is not None else None
        act = build_activation_layer(self.act_cfg) \
            if self.act_cfg is not None else None
        # The FP bypass repeats or group-averages channels; other width
        # ratios (e.g. 96 -> 64) have none and the unit is conv-norm-act.
        bypass = (max(in_channels, out_channels) %
                  min(in_channels, out_channels) == 0)
        return BinaryConvUnit(
            in_channels,
            out_channels,
            kernel_size,
            self.preset,
            padding=padding,
            norm=norm,
            act=act,
            bypass=bypass)
