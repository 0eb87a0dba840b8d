"""Turn a trained binary model into a packed inference model.

:func:`convert_to_packed` walks any ``nn.Module`` (a segmentor, a backbone, a
head) and, in eval mode,

* replaces every binary linear (``BinaryLinear``: q/k/v/proj/fc1/fc2 units,
  patch merging) whose weight and input binarizers are both enabled by a
  :class:`~mmseg_didb.deploy.PackedBinaryLinear`;
* replaces every binary conv (``BinaryConv2d``, the conv units of the binary
  neck and heads) by a :class:`~mmseg_didb.deploy.PackedBinaryConv2d` and
  folds the BatchNorm that follows it in its unit into the output scale and
  bias;
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
from typing import List, Optional, Sequence

import torch
from torch import Tensor, nn

from ..binary.layers import BinaryConv2d, BinaryLinear
from .kernels import binary_matmul, mask_matmul, pack_signs
from .layers import PackedBinaryConv2d, PackedBinaryLinear

__all__ = ['convert_to_packed', 'PackedAttentionMatmuls', 'PackReport']


def _on(q: Optional[nn.Module], kind: str) -> bool:
    return (q is not None and getattr(q, 'kind', None) == kind
            and bool(getattr(q, 'enabled', True)))


def _magnitude(q: nn.Module) -> float:
    """The value of +1 after a binarizer: BiT's alpha, else 1."""
    alpha = getattr(q, 'alpha', None)
    return float(alpha.detach().reshape(-1)[0]) if alpha is not None else 1.0


class PackedAttentionMatmuls(nn.Module):
    """Bit-packed ``Q K^T`` and ``Ab V`` of a binary attention.

    Installed as ``attention.binary_matmuls`` by :func:`convert_to_packed`;
    the attention calls :meth:`similarity` per HFSC branch and
    :meth:`aggregate` instead of its float matmuls. Operands arrive as the
    binarizers' outputs (``{-m, +m}`` or ``{0, a}``), so packing their signs
    is exact; the magnitudes are folded into one output scale.

    Args:
        qk_scales: per branch, the product of the q and k magnitudes, or
            None when ``Q K^T`` is not binary.
        av_scale: ``a`` times the v magnitude, or None when ``Ab V`` is not
            binary.
        prob_value: the nonzero value ``a`` of the binarized probabilities.
    """

    def __init__(self, qk_scales: Optional[List[float]],
                 av_scale: Optional[float], prob_value: float) -> None:
        super().__init__()
        self.qk_scales = qk_scales
        self.av_scale = av_scale
        self.prob_value = prob_value

    def similarity(self, branch: int, q: Tensor, k: Tensor) -> Tensor:
        """``q @ k^T`` for ``(..., N, d)`` sign tensors."""
        if self.qk_scales is None:
            return q @ k.transpose(-2, -1)
        d = q.shape[-1]
        dot = binary_matmul(pack_signs(q), pack_signs(k), d)
        return dot.to(q.dtype) * self.qk_scales[branch]

    def aggregate(self, attn: Tensor, v: Tensor) -> Tensor:
        """``attn @ v`` for ``{0, a}`` probabilities and sign values."""
        if self.av_scale is None:
            return attn @ v
        n = attn.shape[-1]
        # Ab is exactly 0 or a: its bit is Ab - a/2 >= 0
        mask = pack_signs(attn - 0.5 * self.prob_value)
        vt = pack_signs(v.transpose(-2, -1))
        return mask_matmul(mask, vt, n).to(v.dtype) * self.av_scale

    def extra_repr(self) -> str:
        return (f'qk={"packed" if self.qk_scales else "fp"}, '
                f'av={"packed" if self.av_scale else "fp"}')


@dataclass
class PackReport:
    """What :func:`convert_to_packed` replaced (module names)."""
    linears: List[str] = field(default_factory=list)
    convs: List[str] = field(default_factory=list)
    folded_norms: List[str] = field(default_factory=list)
    attentions: List[str] = field(default_factory=list)
    kept_fp: List[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f'{len(self.linears)} packed linears, {len(self.convs)} '
                f'packed convs ({len(self.folded_norms)} BatchNorms folded), '
                f'{len(self.attentions)} attentions with packed matmuls, '
                f'{len(self.kept_fp)} binary-capable layers left FP')


def _packable(layer: nn.Module) -> bool:
    return (_on(getattr(layer, 'weight_quantizer', None), 'weight')
            and _on(getattr(layer, 'input_quantizer', None), 'activation'))


def _attention_matmuls(attn: nn.Module) -> Optional[PackedAttentionMatmuls]:
    qs, ks, v_q, a_q = attn.matmul_binarizers()
    qk = None
    if all(_on(q, 'activation') for q in qs + ks):
        qk = [_magnitude(q) * _magnitude(k) for q, k in zip(qs, ks)]
    av = None
    prob = _magnitude(a_q)
    if _on(a_q, 'attention') and _on(v_q, 'activation'):
        av = prob * _magnitude(v_q)
    if qk is None and av is None:
        return None
    return PackedAttentionMatmuls(qk, av, prob)


def _is_batchnorm(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm) and \
        m.track_running_stats and m.running_mean is not None


def convert_to_packed(model: nn.Module, inplace: bool = False,
                      fold_norms: bool = True,
                      exclude: Sequence[str] = ('auxiliary_head', )
                      ) -> nn.Module:
    """Replace a model's binary layers and matmuls by bit-packed ones.

    Args:
        model: a trained model (any ``nn.Module``); it is put in eval mode.
        inplace: convert ``model`` itself instead of a deep copy.
        fold_norms: fold the BatchNorm of each binary conv unit (a module
            with ``conv`` and ``norm`` children) into the packed conv.
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
    def excluded(name: str) -> bool:
        return any(name == e or name.startswith(e + '.') for e in exclude)

    for name, module in list(model.named_modules()):
        if excluded(name):
            continue
        for child_name, child in list(module.named_children()):
            full = f'{name}.{child_name}' if name else child_name
            if isinstance(child, BinaryLinear):
                if _packable(child):
                    packed = PackedBinaryLinear.from_binary(child)
                    setattr(module, child_name, packed)
                    report.linears.append(full)
                else:
                    report.kept_fp.append(full)
            elif isinstance(child, BinaryConv2d):
                if _packable(child):
                    packed = PackedBinaryConv2d.from_binary(child)
                    setattr(module, child_name, packed)
                    report.convs.append(full)
                    norm = getattr(module, 'norm', None)
                    if (fold_norms and child_name == 'conv'
                            and norm is not None and _is_batchnorm(norm)):
                        packed.fold_bn(norm)
                        module.norm = nn.Identity()
                        report.folded_norms.append(f'{name}.norm')
                else:
                    report.kept_fp.append(full)
        if hasattr(module, 'matmul_binarizers') and hasattr(
                module, 'binary_matmuls'):
            matmuls = _attention_matmuls(module)
            if matmuls is not None:
                module.binary_matmuls = matmuls
                report.attentions.append(name)
    model.pack_report = report
    return model
