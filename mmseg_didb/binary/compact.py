"""Compact autograd saves of the binary layers.

A fake-quantized binary layer computes ``F.linear(x_b, w_b)`` (or a conv)
on tensors whose entries are ``+-level``: the binarized input (``level`` 1,
or BiT's ``alpha``) and the binarized weight (``level`` the per-row scale
``a_r``). Autograd would keep both as float tensors for the backward pass.
Inside :func:`binary_operands`, the layer's matmul / conv saves each of them
as a boolean sign tensor (1 byte per entry instead of 4) plus its level, and
rebuilds the float tensor, bit for bit, when the backward pass needs it:
gradients are unchanged (``tests/test_compact_saves.py`` compares every
parameter's gradient with the plain path), activation memory of the binary
operands drops to a quarter.

The attention's binary matmuls (``Q K^T`` on zero-padded windows, ``Ab V``)
save reshaped copies of their operands, which no tensor identity can match:
inside :func:`ternary_saves` *every* float tensor autograd saves is stored
as int8 signs plus its magnitude, which is exact for the tensors such a
matmul saves (entries ``{-L, 0, +L}``, one ``L`` per tensor).

:func:`compact_saves` switches the mechanism off (``compact_saves(False)``),
for comparisons; it is on by default.
"""
import contextlib
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .flags import Switch

__all__ = ['binary_operands', 'binarizers_on', 'compact_saves',
           'compact_saves_enabled', 'ternary_saves']

_ENABLED = Switch(True)


def compact_saves(enabled: bool = True) -> contextlib.AbstractContextManager:
    """Turn compact saves of the binary layers on or off inside the block."""
    return _ENABLED.set(enabled)


def compact_saves_enabled() -> bool:
    """Whether the binary layers save their binary operands compactly."""
    return bool(_ENABLED)


def _rebuilt(values: Tensor, shape: torch.Size,
             stride: Tuple[int, ...]) -> Tensor:
    """``values`` in the layout (shape and strides) of the saved tensor, so
    that the backward pass sees exactly what autograd saved."""
    out = torch.empty_strided(shape, stride, dtype=values.dtype,
                              device=values.device)
    return out.copy_(values)


class _SignSaves:
    """``saved_tensors_hooks`` pair packing views of the given +-level
    tensors into (sign bits, level, shape, stride); everything else is kept
    as it is."""

    def __init__(self, operands: Sequence[Tuple[Tensor, Tensor]]) -> None:
        # the hooks live as long as the graph: they must not hold the
        # operands themselves, only what identifies them
        self.operands = [(t.untyped_storage().data_ptr(), t.shape,
                          t.stride(), level) for t, level in operands]

    def _level_for(self, saved: Tensor) -> Optional[Tensor]:
        ptr = saved.untyped_storage().data_ptr()
        for base_ptr, shape, stride, level in self.operands:
            if ptr != base_ptr or saved.numel() != shape.numel():
                continue
            if level.numel() == 1:
                return level.reshape(())
            if saved.shape == shape and saved.stride() == stride:
                return level
            # linear saves the weight transposed (a square one too: the
            # strides tell)
            if (saved.dim() == 2 and saved.shape == shape[::-1]
                    and saved.stride() == stride[::-1]):
                return level.reshape(shape[0], -1).t()
        return None

    def pack(self, saved: Tensor):
        level = self._level_for(saved)
        if level is None:
            return saved
        return (saved > 0, level.to(saved.dtype), saved.shape, saved.stride())

    @staticmethod
    def unpack(packed):
        if isinstance(packed, Tensor):
            return packed
        bits, level, shape, stride = packed
        return _rebuilt(torch.where(bits, level, -level), shape, stride)


def binary_operands(
        operands: Sequence[Tuple[Tensor, Tensor]]
) -> contextlib.AbstractContextManager:
    """Context in which the matmul / conv of a binary layer saves the given
    ``(tensor, level)`` operands as sign bits (entries of ``tensor`` are
    ``+-level``, ``level`` a scalar or broadcastable per row).

    A no-op when compact saves are off, no gradient is recorded, there is
    no operand, or under ``torch.compile`` (the compiled graph chooses its
    own saved tensors; Python hooks that match storages would only make
    dynamo recompile).
    """
    if torch.compiler.is_compiling():
        return contextlib.nullcontext()
    ops: List[Tuple[Tensor, Tensor]] = [
        (t, level.detach()) for t, level in operands]
    if not (ops and bool(_ENABLED) and torch.is_grad_enabled()):
        return contextlib.nullcontext()
    saves = _SignSaves(ops)
    return torch.autograd.graph.saved_tensors_hooks(saves.pack, saves.unpack)


class _TernarySaves:
    """``saved_tensors_hooks`` pair packing each float tensor whose entries
    are ``{-L, 0, +L}`` into (int8 signs, L, shape, stride).

    Only tensors laid out densely (contiguous, or contiguous once the last
    two axes are swapped, as matmuls save them) are packed; others are kept
    as they are.
    """

    @staticmethod
    def pack(saved: Tensor):
        if (not saved.is_floating_point() or saved.dim() < 2
                or not (saved.is_contiguous()
                        or saved.transpose(-2, -1).is_contiguous())):
            return saved
        level = saved.detach().abs().amax()
        return (torch.sign(saved.detach()).to(torch.int8), level,
                saved.shape, saved.stride())

    @staticmethod
    def unpack(packed):
        if isinstance(packed, Tensor):
            return packed
        signs, level, shape, stride = packed
        return _rebuilt(signs.to(level.dtype) * level, shape, stride)


def binarizers_on(binarizers: Sequence[torch.nn.Module]) -> bool:
    """Whether every one of ``binarizers`` is an enabled binarizer (an FP
    stand-in such as ``nn.Identity`` is not): the condition under which an
    op on their outputs may use :func:`ternary_saves`."""
    return all(getattr(b, 'enabled', False) for b in binarizers)


def ternary_saves(enabled: bool) -> contextlib.AbstractContextManager:
    """Context in which every float tensor that autograd saves is stored as
    int8 signs and one magnitude: 1 byte per entry instead of 4, rebuilt
    bit for bit in the backward pass.

    Exact only when each saved float tensor has entries ``{-L, 0, +L}``:
    wrap a single op whose inputs are binary (the attention matmuls ``Q
    K^T`` with zero-padded windows and ``Ab V`` with ``Ab`` in ``{0, a}``,
    where both operands are binarized, :func:`binarizers_on`) and pass
    ``enabled=False`` when one of them is not. A no-op, like :func:`binary_operands`, when compact
    saves are off, no gradient is recorded or under ``torch.compile``.
    """
    if (not enabled or torch.compiler.is_compiling() or not bool(_ENABLED)
            or not torch.is_grad_enabled()):
        return contextlib.nullcontext()
    return torch.autograd.graph.saved_tensors_hooks(_TernarySaves.pack,
                                                    _TernarySaves.unpack)
