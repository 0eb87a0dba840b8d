"""Turning the ``ConvModule``s of an mmseg decode head into binary conv units.

The binary heads keep mmseg's head classes (topology, arguments, forward) and
only swap every ``mmcv.cnn.ConvModule`` for a
:class:`~mmseg_didb.binary.BinaryConvUnit`,
``y = act(norm(BinaryConv2d(q(x))) + bypass(x))`` (BiDense CFB, arXiv
2411.10346). The final 1x1 classifier ``conv_seg`` is a plain ``nn.Conv2d``,
not a ``ConvModule``, so it stays FP.
"""
import re
from typing import Optional

from mmcv.cnn import ConvModule, build_norm_layer
from torch import nn

from ...binary import BinaryConvUnit, BinaryPreset, resolve_preset

__all__ = ['binary_unit_from_conv_module', 'binarize_conv_modules',
           'rename_conv_module_norms', 'set_unit_checkpointing',
           'BinaryConvModulesMixin']

# mmcv names a ConvModule's norm after its type ('bn', 'gn', 'ln', ...); a
# binary unit calls it 'norm'
_CONV_MODULE_NORM = re.compile(r'^(.*)\.(bn|gn|in|ln)\.(\w+)$')


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
        (FP :class:`~mmseg_didb.binary.ConvBypass`, any widths) and ``act``.
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
    return BinaryConvUnit(
        conv.in_channels,
        out_channels,
        conv.kernel_size,
        preset,
        stride=stride,
        padding=conv.padding,
        dilation=conv.dilation,
        norm=norm,
        act=act,
        groups=conv.groups)


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


def rename_conv_module_norms(module: nn.Module, state_dict: dict, prefix: str,
                             *args) -> None:
    """Load-state-dict pre-hook: checkpoints of the FP mmseg head (or of the
    ``fp`` preset) name a ConvModule's norm ``bn`` / ``gn`` ...; the binary
    units of the same head call it ``norm``. Renames those keys, so an
    FP-trained head initialises the binary one (conv weights and norms; the
    binary-only shifts and activations keep their init)."""
    own = set(module.state_dict())
    for key in [k for k in state_dict if k.startswith(prefix)]:
        m = _CONV_MODULE_NORM.match(key[len(prefix):])
        if m is None:
            continue
        new = f'{m.group(1)}.norm.{m.group(3)}'
        if new in own and key[len(prefix):] not in own:
            state_dict[prefix + new] = state_dict.pop(key)


def set_unit_checkpointing(module: nn.Module, with_cp: bool) -> int:
    """Switch activation checkpointing of every binary conv unit under
    ``module`` (``BinaryConvUnit.with_cp``); returns how many there are.

    Note: a checkpointed unit's BatchNorm sees the batch twice per step (the
    forward and the recompute), so its running statistics take two momentum
    steps per iteration, as with mmseg's ``with_cp`` backbones; gradients
    are unchanged.
    """
    units = [m for m in module.modules() if isinstance(m, BinaryConvUnit)]
    for unit in units:
        unit.with_cp = bool(with_cp)
    return len(units)


class BinaryConvModulesMixin:
    """Swaps the ``ConvModule``s of an mmseg head or neck for binary units.

    Mix in before the mmseg class and call :meth:`_binarize` after its
    ``__init__`` built the ``ConvModule``s from ``norm_cfg`` / ``act_cfg``;
    both keep one meaning for every binary head and neck (see
    :func:`binary_unit_from_conv_module`). With a non-binary preset
    (``'fp'``) nothing is swapped: the module is exactly mmseg's.
    """

    preset: BinaryPreset

    def _binarize(self, preset, preset_overrides: Optional[dict],
                  with_cp: bool = False) -> None:
        if preset_overrides is not None and not isinstance(
                preset_overrides, dict):
            raise TypeError('preset_overrides must be a dict such as '
                            f'dict(act="ste"), got {preset_overrides!r}')
        self.preset = resolve_preset(preset, **(preset_overrides or {}))
        self.num_binary_units = 0
        if self.preset.unit or self.preset.is_binary:
            self.num_binary_units = binarize_conv_modules(
                self, self.preset, self.norm_cfg, self.act_cfg)
            self._register_load_state_dict_pre_hook(
                rename_conv_module_norms, with_module=True)
        set_unit_checkpointing(self, with_cp)
