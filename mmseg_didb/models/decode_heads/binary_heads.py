"""Binary UPerNet heads: mmseg's ``UPerHead`` / ``FCNHead`` with 1-bit convs.

Topology, arguments and forward are mmseg's (the classes subclass them and
reuse their ``__init__`` and ``forward``); after the parent builds its
``ConvModule``s, each is swapped for a binary conv unit
``y = act(norm(BinaryConv2d(q(x))) + bypass(x))`` with an FP channel bypass
(BiDense CFB, arXiv 2411.10346; docs/method.md). The binarizers and the unit
activation come from the plugin's preset table; ``norm_cfg`` (``BN`` /
``SyncBN``), ``align_corners``, ``in_index``, ``dropout_ratio`` and the losses
keep their mmseg meaning. The final 1x1 classifier ``conv_seg`` stays FP. With
``preset='fp'`` nothing is swapped: the head is exactly mmseg's, which gives
the "binary backbone + FP head" comparison row.
"""
from typing import Optional, Sequence

from mmseg.models.decode_heads import FCNHead, UPerHead
from mmseg.registry import MODELS

from .binary_conv_module import BinaryConvModulesMixin

__all__ = ['BinaryUPerHead', 'BinaryFCNHead']


@MODELS.register_module()
class BinaryUPerHead(BinaryConvModulesMixin, UPerHead):
    """mmseg ``UPerHead`` (PPM + FPN, UPerNet) with binary conv units.

    Every 3x3 / 1x1 conv of the PPM, the bottleneck, the lateral and FPN convs
    and the FPN bottleneck becomes a binary conv unit; ``conv_seg`` stays FP.

    Args:
        pool_scales: PPM pooling scales, as ``UPerHead``.
        preset: Binary preset name, :class:`BinaryPreset` or dict ('didb',
            'react', 'fp', ...); 'fp' keeps mmseg's UPerHead unchanged.
        preset_overrides: Preset fields to override, e.g. ``dict(act='ste')``.
        with_cp: Activation checkpointing of every binary conv unit in
            training (mmseg's ``with_cp``): less memory, one more forward
            of the head per step.
        **kwargs: ``BaseDecodeHead`` arguments (in_channels, channels,
            in_index, num_classes, norm_cfg, act_cfg, align_corners,
            loss_decode, ...).
    """

    def __init__(self,
                 pool_scales: Sequence[int] = (1, 2, 3, 6),
                 preset='didb',
                 preset_overrides: Optional[dict] = None,
                 with_cp: bool = False,
                 **kwargs) -> None:
        super().__init__(pool_scales=pool_scales, **kwargs)
        self._binarize(preset, preset_overrides, with_cp)


@MODELS.register_module()
class BinaryFCNHead(BinaryConvModulesMixin, FCNHead):
    """mmseg ``FCNHead`` (e.g. UPerNet's auxiliary head) with binary units.

    Args:
        preset: Binary preset name, :class:`BinaryPreset` or dict; 'fp' keeps
            mmseg's FCNHead unchanged.
        preset_overrides: Preset fields to override.
        with_cp: Activation checkpointing of every binary conv unit.
        **kwargs: ``FCNHead`` arguments (num_convs, kernel_size, concat_input,
            dilation) and ``BaseDecodeHead`` arguments.
    """

    def __init__(self,
                 preset='didb',
                 preset_overrides: Optional[dict] = None,
                 with_cp: bool = False,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self._binarize(preset, preset_overrides, with_cp)
