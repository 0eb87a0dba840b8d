"""Turn a trained binary model into a packed inference model.

:func:`convert_to_packed` walks any ``nn.Module`` (a segmentor, a backbone, a
head) and, in eval mode,

* replaces every binary linear (``BinaryLinear``: q/k/v/proj/fc1/fc2 units,
  patch merging) whose weight and input binarizers are both enabled by a
  :class:`~mmseg_didb.deploy.PackedBinaryLinear`;
* replaces every binary conv (``BinaryConv2d``, the conv units of the binary
  neck and heads) by a :class:`~mmseg_didb.deploy.PackedBinaryConv2d` and
  fuses the BatchNorm that follows it in its unit into the kernel's
  write-back;
* gives every binary attention (a module with ``matmul_binarizers()`` and a
  ``binary_matmuls`` slot, e.g. ``DIDBAttention``) packed ``Q K^T``
  (XNOR-popcount, each HFSC branch) and ``Ab V`` (AND-popcount of the
  ``{0, a}`` mask with the value signs) products.

Everything else stays FP and unchanged: the stem, norms, softmax, relative
position bias, (Token) RPReLU, shortcuts and bypasses, DIBA's local term,
resizes and ``conv_seg``. Layers whose binarization is switched off (FP
presets, stage 1 of two-stage training) are left as they are, so a model
with no binary layer converts to itself. Binarize-and-pack of each layer's
input is one fused pass (division by the running magnitude, shift, sign and
bit packing) inside the kernel that packs it.
"""
import copy
from dataclasses import dataclass, field
from typing import List, Sequence

from torch import nn

from ..binary.exact import has_running_stats
from ..binary.layers import (BinaryConv2d, BinaryConvUnit, BinaryLinear,
                             BinaryLinearUnit, TokenNorm)
from .attention import PackedAttentionMatmuls, packed_attention
from .layers import PackedBinaryConv2d, PackedBinaryLinear, binarizer_on
from .units import PackedBinaryConvUnit, PackedBinaryLinearUnit

__all__ = ['convert_to_packed', 'PackedAttentionMatmuls', 'PackReport']


@dataclass
class PackReport:
    """What :func:`convert_to_packed` replaced (module names)."""
    linears: List[str] = field(default_factory=list)
    convs: List[str] = field(default_factory=list)
    folded_norms: List[str] = field(default_factory=list)
    attentions: List[str] = field(default_factory=list)
    fused_units: List[str] = field(default_factory=list)
    kept_fp: List[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f'{len(self.linears)} packed linears, {len(self.convs)} '
                f'packed convs ({len(self.folded_norms)} BatchNorms folded, '
                f'{len(self.fused_units)} units with their FP tail fused), '
                f'{len(self.attentions)} attentions with packed matmuls, '
                f'{len(self.kept_fp)} binary-capable layers left FP')


def _packable(layer: nn.Module) -> bool:
    return (binarizer_on(getattr(layer, 'weight_quantizer', None), 'weight')
            and binarizer_on(getattr(layer, 'input_quantizer', None),
                             'activation'))


def _pack_child(parent: nn.Module, name: str, child: nn.Module, full: str,
                fold_norms: bool, report: PackReport) -> bool:
    """Replace one child by its packed form; False when it has none (its
    own children are then visited)."""
    if isinstance(child, BinaryLinearUnit) and _packable(child.linear) \
            and PackedBinaryLinearUnit.fusable(child):
        setattr(parent, name, PackedBinaryLinearUnit.from_unit(child))
        report.linears.append(f'{full}.linear')
        report.fused_units.append(full)
        if isinstance(child.norm, TokenNorm):
            report.folded_norms.append(f'{full}.norm')
        return True
    if isinstance(child, BinaryConvUnit) and _packable(child.conv) \
            and fold_norms and PackedBinaryConvUnit.fusable(child):
        setattr(parent, name, PackedBinaryConvUnit.from_unit(child))
        report.convs.append(f'{full}.conv')
        report.fused_units.append(full)
        if has_running_stats(child.norm):
            report.folded_norms.append(f'{full}.norm')
        return True
    if isinstance(child, BinaryLinear):
        if _packable(child):
            setattr(parent, name, PackedBinaryLinear.from_binary(child))
            report.linears.append(full)
        else:
            report.kept_fp.append(full)
        return True
    if isinstance(child, BinaryConv2d):
        # a norm after it stays its parent's module, as in the trained model
        if _packable(child):
            setattr(parent, name, PackedBinaryConv2d.from_binary(child))
            report.convs.append(full)
        else:
            report.kept_fp.append(full)
        return True
    return False


def convert_to_packed(model: nn.Module, inplace: bool = False,
                      fold_norms: bool = True,
                      exclude: Sequence[str] = ('auxiliary_head', )
                      ) -> nn.Module:
    """Replace a model's binary layers and matmuls by bit-packed ones.

    Args:
        model: a trained model (any ``nn.Module``); it is put in eval mode.
        inplace: convert ``model`` itself instead of a deep copy.
        fold_norms: fuse the BatchNorm of each binary conv unit (and the
            token BatchNorm of a linear unit) into the packed layer's
            write-back (False: pack the layer alone).
        exclude: names of submodules left as they are (with what is under
            them): by default mmseg's auxiliary heads, which only train.

    Returns:
        The packed model in eval mode; ``model.pack_report`` (a
        :class:`PackReport`) lists what was replaced.
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    report = PackReport()

    def visit(module: nn.Module, prefix: str) -> None:
        if hasattr(module, 'matmul_binarizers') and hasattr(
                module, 'binary_matmuls'):
            matmuls = packed_attention(module)
            if matmuls is not None:
                module.binary_matmuls = matmuls
                report.attentions.append(prefix)
        for name, child in list(module.named_children()):
            full = f'{prefix}.{name}' if prefix else name
            if any(full == e or full.startswith(e + '.') for e in exclude):
                continue
            if not _pack_child(module, name, child, full, fold_norms,
                               report):
                visit(child, full)

    visit(model, '')
    model.pack_report = report
    return model
