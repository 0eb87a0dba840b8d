"""Packed binary units: a whole unit in one kernel call.

A binary unit (``mmseg_didb.binary.BinaryLinearUnit`` on tokens,
``BinaryConvUnit`` on maps) is

    y = act(norm(BinaryLayer(q(x))) + shortcut(x))

At inference every part after the binary product is a per-row operation on
the product's output row (a token, or an output pixel): LayerNorm over its
channels, the FP channel shortcut of the input row, (R)PReLU and the Token
RPReLU terms. :class:`PackedBinaryLinearUnit` and
:class:`PackedBinaryConvUnit` run them in the GEMM's write-back
(:class:`~mmseg_didb.deploy.kernels.UnitEpilogue`) instead of as separate
passes over memory, a BatchNorm after the binary layer included. The
operations are those of the unit's exact inference arithmetic
(:mod:`mmseg_didb.binary.exact`), so the results are the unit's bit for
bit. Units with other parts (a GroupNorm, another activation)
keep them as modules, applied after the fused part.
"""
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..binary.exact import has_running_stats
from ..binary.layers import BinaryConvUnit, BinaryLinearUnit, TokenNorm
from ..binary.shortcuts import ChannelShortcut, ConvBypass, MergeShortcut
from ..binary.rprelu import ChannelPReLU, RPReLU, TokenRPReLU
from .kernels import UnitEpilogue
from .layers import PackedBinaryConv2d, PackedBinaryLinear

__all__ = ['PackedBinaryLinearUnit', 'PackedBinaryConvUnit']


def _float(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.detach().float().clone()


def _activation_terms(act: nn.Module) -> Optional[Dict[str, Tensor]]:
    """PReLU / RPReLU / dynamic Token RPReLU parameters of a unit's
    activation as epilogue fields; ``{}`` for no activation, None when the
    activation is not one the epilogue computes."""
    if isinstance(act, nn.Identity):
        return {}
    if not isinstance(act, ChannelPReLU):
        return None
    terms = dict(slope=_float(act.slope))
    if isinstance(act, RPReLU):
        terms.update(gamma=_float(act.gamma), zeta=_float(act.zeta))
    if isinstance(act, TokenRPReLU) and act.mode == 'dynamic':
        terms.update(dyn_gamma=_float(act.dyn_gamma),
                     dyn_zeta=_float(act.dyn_zeta))
    return terms


class PackedBinaryLinearUnit(nn.Module):
    """Inference :class:`~mmseg_didb.binary.BinaryLinearUnit` on packed
    kernels, its FP tail fused into the kernel.

    Build with :meth:`from_unit`; called like the unit, ``(x, hw)`` on
    tokens ``(B, N, C)``. The static Token RPReLU maps of a token grid are
    resized once per grid and cached.

    Args:
        linear: the packed binary linear (a TokenNorm already fused in).
        ln: the unit's LayerNorm, or None.
        shortcut: the unit's FP shortcut (ChannelShortcut, MergeShortcut)
            or None.
        act: the unit's activation (Identity, PReLU, RPReLU, Token RPReLU).
    """

    def __init__(self, linear: PackedBinaryLinear, ln: Optional[nn.LayerNorm],
                 shortcut: Optional[nn.Module], act: nn.Module) -> None:
        super().__init__()
        self.linear = linear
        self.ln = ln
        self.shortcut = shortcut
        self.act = act
        self.terms = _activation_terms(act)
        if self.terms is None:
            raise TypeError(f'no fused form of the activation {act!r}')
        self._token_maps: Dict[Tuple, Tuple[Tensor, Tensor]] = {}

    @staticmethod
    def fusable(unit: nn.Module) -> bool:
        """True when every part of ``unit`` has a fused form."""
        return (isinstance(unit, BinaryLinearUnit) and unit.norm is not None
                and isinstance(unit.norm, (nn.LayerNorm, TokenNorm))
                and (unit.shortcut is None or isinstance(
                    unit.shortcut, (ChannelShortcut, MergeShortcut)))
                and _activation_terms(unit.act) is not None)

    @classmethod
    def from_unit(cls, unit: BinaryLinearUnit) -> 'PackedBinaryLinearUnit':
        """From a trained unit whose linear can be packed (see
        :meth:`fusable`)."""
        if not cls.fusable(unit):
            raise TypeError(f'{type(unit).__name__} has parts without a '
                            'fused form; pack its linear only')
        linear = PackedBinaryLinear.from_binary(unit.linear)
        ln = None
        if isinstance(unit.norm, TokenNorm):
            linear.fold_bn(unit.norm.bn)
        else:
            ln = unit.norm
        return cls(linear, ln, unit.shortcut, unit.act)

    def _static_maps(self, hw: Optional[Sequence[int]],
                     n: int) -> Tuple[Tensor, Tensor]:
        key = (None if hw is None else tuple(int(s) for s in hw), n)
        if key not in self._token_maps:
            with torch.no_grad():
                g, z = self.act.token_maps(hw, n)
            self._token_maps[key] = (g.detach().float().reshape(-1),
                                     z.detach().float().reshape(-1))
        return self._token_maps[key]

    def epilogue(self, x: Tensor,
                 hw: Optional[Sequence[int]]) -> UnitEpilogue:
        """The fused tail for input tokens ``x``."""
        ep = UnitEpilogue(**self.terms)
        if self.ln is not None:
            ep.ln_weight = self.ln.weight
            ep.ln_bias = self.ln.bias
            ep.eps = self.ln.eps
            if ep.ln_weight is None:  # no affine part
                ep.ln_weight = x.new_ones(self.linear.out_features)
                ep.ln_bias = x.new_zeros(self.linear.out_features)
        if self.shortcut is not None:
            channels = self.shortcut
            res = x
            if isinstance(channels, MergeShortcut):
                res, channels = channels.pool(x), channels.channels
            ep.res = res.reshape(-1, res.shape[-1])
            ep.res_count = channels.count
        if isinstance(self.act, TokenRPReLU) and self.act.mode == 'static':
            if x.dim() != 3:
                raise ValueError('Token RPReLU expects tokens (B, N, C), got '
                                 f'shape {tuple(x.shape)}')
            ep.token_gamma, ep.token_zeta = self._static_maps(hw, x.shape[1])
        return ep

    def forward(self, x: Tensor,
                hw: Optional[Sequence[int]] = None) -> Tensor:
        y = self.linear.forward_rows(x, self.epilogue(x, hw))
        return y.reshape(*x.shape[:-1], -1).to(x.dtype)


class PackedBinaryConvUnit(nn.Module):
    """Inference :class:`~mmseg_didb.binary.BinaryConvUnit` on packed
    kernels: BatchNorm, bypass and (R)PReLU fused into the kernel.

    Build with :meth:`from_unit`. Outputs are channels-last (a row of
    channels per pixel), the layout the kernel writes; later FP operations
    keep it.

    Args:
        conv: the packed binary convolution (BatchNorm fused in).
        bypass: the unit's FP bypass, or None.
        act: the unit's activation.
    """

    def __init__(self, conv: PackedBinaryConv2d, bypass: Optional[ConvBypass],
                 act: nn.Module) -> None:
        super().__init__()
        self.conv = conv
        self.bypass = bypass
        terms = _activation_terms(act)
        # an activation without a fused form runs after the kernel
        self.act = act if terms is None else None
        self.terms = terms or {}

    @staticmethod
    def fusable(unit: nn.Module) -> bool:
        """True when the unit's norm folds into the packed convolution."""
        return isinstance(unit, BinaryConvUnit) and (
            has_running_stats(unit.norm) or isinstance(unit.norm, nn.Identity))

    @classmethod
    def from_unit(cls, unit: BinaryConvUnit) -> 'PackedBinaryConvUnit':
        """From a trained unit with a packable conv and a BatchNorm."""
        if not cls.fusable(unit):
            raise TypeError(f'the norm {unit.norm!r} does not fold into the '
                            'packed convolution')
        conv = PackedBinaryConv2d.from_binary(unit.conv)
        if has_running_stats(unit.norm):
            conv.fold_bn(unit.norm)
        return cls(conv, unit.bypass, unit.act)

    def forward(self, x: Tensor) -> Tensor:
        ep = UnitEpilogue(**self.terms)
        if self.bypass is not None:
            b = self.bypass.pool(x)
            out_hw = self.conv.output_size(x.shape[-2:])
            if tuple(b.shape[-2:]) != tuple(out_hw):
                raise ValueError(
                    f'BinaryConvUnit bypass gives {tuple(b.shape[-2:])} but '
                    f'the conv gives {tuple(out_hw)}; use "same" padding')
            ep.res = b.permute(0, 2, 3, 1).reshape(-1, b.shape[1])
            ep.res_count = self.bypass.channels.count
        y = self.conv(x, ep)
        return y if self.act is None else self.act(y)
