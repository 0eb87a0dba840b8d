"""BinaryMultiLevelNeck: mmseg's ViT-to-UPerHead neck, binary conv units."""
from typing import List, Optional, Sequence, Union

from mmseg.models.necks import MultiLevelNeck
from mmseg.registry import MODELS

from mmseg_didb.binary.presets import BinaryPreset
from ..decode_heads.binary_conv_module import BinaryConvModulesMixin


@MODELS.register_module()
class BinaryMultiLevelNeck(BinaryConvModulesMixin, MultiLevelNeck):
    """mmseg ``MultiLevelNeck`` whose 1x1 lateral and 3x3 output convs are
    binary conv units (BiDense-style: ``act(BN(BinConv(x)) + bypass(x))``).

    The topology (per-level lateral conv, bilinear rescale by ``scales``,
    per-level 3x3 conv) and ``forward`` are mmseg's; its ``ConvModule``s are
    swapped for binary units exactly as in the binary heads
    (:class:`~mmseg_didb.models.decode_heads.binary_conv_module.BinaryConvModulesMixin`),
    so ``norm_cfg`` and ``act_cfg`` mean the same in neck and heads. With
    ``preset='fp'`` nothing is swapped: the neck is exactly mmseg's.

    Args:
        in_channels: Channels of each backbone output.
        out_channels: Channels of every neck output.
        scales: Rescale factor of each level, e.g. ``[4, 2, 1, 0.5]`` for
            ViT ``out_indices=(3, 5, 7, 11)``.
        norm_cfg: Norm after each binary conv; ``None`` uses BatchNorm2d (a
            binary conv needs a norm to restore the activation scale).
        act_cfg: As in the heads: an activation config gives the preset's
            unit activation (RPReLU for most presets, the binary counterpart
            of ReLU), ``None`` no activation (mmseg's ``MultiLevelNeck``
            default). The default keeps the unit activation on.
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
                 act_cfg: Optional[dict] = dict(type='ReLU'),
                 preset: Union[str, BinaryPreset, dict] = 'didb',
                 preset_overrides: Optional[dict] = None,
                 with_cp: bool = False) -> None:
        if not isinstance(in_channels, (list, tuple)):
            raise TypeError('in_channels must be a list of ints, one per '
                            f'backbone output, got {in_channels!r}.')
        if len(in_channels) not in (1, len(scales)):
            raise ValueError(f'{len(in_channels)} inputs for {len(scales)} '
                             'scales: give one input or one per scale.')
        super().__init__(list(in_channels), out_channels, list(scales),
                         norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.norm_cfg = norm_cfg
        self.act_cfg = act_cfg
        self._binarize(preset, preset_overrides, with_cp)
