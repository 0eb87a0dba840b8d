"""Parameter, BOP, FLOP, OP and 1-bit model-size accounting.

Conventions (docs/efficiency.md; Bi-Real Net / ReActNet for OPs):

* **FLOPs** are multiply-accumulates counted exactly as mmengine's
  :class:`~mmengine.analysis.FlopAnalyzer` (fvcore) counts them: one fused
  multiply-add of a linear / conv / matmul / einsum is 1, a norm is 4-5 per
  element, bilinear upsampling 4 per output element, adaptive average pooling
  1 per input element; element-wise operations (activations, RPReLU, residual
  and shortcut additions, softmax, sign) count 0. On an FP model the FLOPs
  reported here *are* mmengine's numbers.
* **BOPs** are the multiply-accumulates of binary operations, i.e. the part of
  mmengine's count that a 1-bit kernel (XNOR + popcount) executes:

  - a binary linear / conv (:class:`~mmseg_didb.binary.BinaryLinear`,
    :class:`~mmseg_didb.binary.BinaryConv2d`) whose weight quantizer *and*
    input quantizer are both present and enabled: ``in * out * tokens``
    (conv: ``Cin/groups * k_h * k_w * Cout * H_out * W_out``) per image;
  - the attention matmuls ``Q K^T`` and ``Ab V`` of a binary attention module,
    when both operands are binary (the quantizers producing them are enabled);
    see :data:`~.binary_ops.MATMUL_COUNTERS`.

  A layer with binary activations but FP weights (stage 1 of two-stage
  training), or binary weights but FP activations, is *not* a 1-bit kernel: its
  MACs stay FLOPs.
* **OPs** = BOPs / 64 + FLOPs.
* **Size** = 1 bit per binary weight (weights of layers whose weight quantizer
  is enabled) + 32 bits per FP parameter + 32 bits per derived weight scale
  (the per-row ``a_r`` that is computed from the latent weight, not a
  parameter, but is needed at inference and stored by the packed export).

Counting uses one forward pass: mmengine traces the model (jit) and attributes
every counted op to the module whose ``__call__`` executed it; forward hooks on
the binary modules, active during that same pass, record which of those
MACs are binary. Modules that do not run in inference (e.g. mmseg's
``auxiliary_head``) have 0 OPs.
"""
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch import Tensor

from ..binary.exact import exact_arithmetic
from .binary_ops import (MATMUL_COUNTERS, _find_counter, binary_weight,
                         derived_scale_count, is_bop_layer)

#: mmengine operator names whose MACs move to BOPs for binary linears/convs.
_LAYER_OPS = ('linear', 'addmm', 'matmul', 'mm', 'bmm', 'conv', 'einsum')


# --------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------
@dataclass
class Complexity:
    """Counts of one module group (or the total).

    Attributes:
        params_binary: weights stored at 1 bit.
        params_fp: FP parameters (everything else, incl. learnable scales).
        scales: derived FP weight scales (not parameters, stored for
            inference).
        bops: binary multiply-accumulates.
        flops: FP multiply-accumulates (mmengine convention).
    """
    params_binary: int = 0
    params_fp: int = 0
    scales: int = 0
    bops: int = 0
    flops: int = 0

    @property
    def params(self) -> int:
        return self.params_binary + self.params_fp

    @property
    def ops(self) -> float:
        """OPs = BOPs / 64 + FLOPs."""
        return self.bops / 64 + self.flops

    @property
    def size_bits(self) -> int:
        return self.params_binary + 32 * (self.params_fp + self.scales)

    @property
    def size_mb(self) -> float:
        """Model size in MB (10^6 bytes)."""
        return self.size_bits / 8 / 1e6

    def __add__(self, other: 'Complexity') -> 'Complexity':
        return Complexity(*(getattr(self, k) + getattr(other, k)
                            for k in ('params_binary', 'params_fp', 'scales',
                                      'bops', 'flops')))

    def to_dict(self) -> Dict[str, Union[int, float]]:
        return dict(params=self.params, params_binary=self.params_binary,
                    params_fp=self.params_fp, scales=self.scales,
                    bops=self.bops, flops=self.flops, ops=self.ops,
                    size_bits=self.size_bits, size_mb=self.size_mb)


@dataclass
class ComplexityReport:
    """Per-group and total counts for one model and input shape.

    Attributes:
        groups: name -> :class:`Complexity`, in model order; groups listed in
            ``excluded`` are reported but not part of :attr:`total`.
        excluded: group names left out of the total (training-only heads).
        mmengine_flops: mmengine's total for the same pass (all MACs, FP and
            binary), kept as a cross-check: ``total.flops + total.bops``
            equals it.
        layers: per binary op, ``(module name, kind, BOPs)``.
        input_shape: the analysed input shape.
    """
    groups: 'OrderedDict[str, Complexity]'
    excluded: Tuple[str, ...] = ()
    mmengine_flops: int = 0
    layers: List[Tuple[str, str, int]] = field(default_factory=list)
    input_shape: Tuple[int, ...] = ()

    @property
    def total(self) -> Complexity:
        out = Complexity()
        for name, c in self.groups.items():
            if name not in self.excluded:
                out = out + c
        return out

    def to_dict(self) -> dict:
        return dict(input_shape=list(self.input_shape),
                    groups={k: v.to_dict() for k, v in self.groups.items()},
                    excluded=list(self.excluded),
                    total=self.total.to_dict(),
                    mmengine_flops=self.mmengine_flops)


# --------------------------------------------------------------------------
# analysis
# --------------------------------------------------------------------------
def default_groups(model: nn.Module) -> List[str]:
    """Top-level children that hold parameters or run (backbone, neck, ...)."""
    return [name for name, child in model.named_children()
            if child is not None and name != 'data_preprocessor']


def _own_counts(by_module_op: Dict[str, Dict[str, int]],
                names: Sequence[str]) -> Dict[str, Dict[str, int]]:
    """Per-module counts excluding those of the module's children."""
    own = {name: dict(by_module_op.get(name, {})) for name in names}
    for name in names:
        if not name:
            continue
        parent = name.rsplit('.', 1)[0] if '.' in name else ''
        if parent in own:
            for op, n in by_module_op.get(name, {}).items():
                own[parent][op] = own[parent].get(op, 0) - n
    return own


def _group_of(name: str, groups: Sequence[str]) -> Optional[str]:
    for g in groups:
        if name == g or name.startswith(g + '.'):
            return g
    return None


def analyze_complexity(model: nn.Module,
                       inputs: Union[Tensor, Tuple[Tensor, ...]],
                       groups: Optional[Sequence[str]] = None,
                       exclude: Sequence[str] = ('auxiliary_head', )
                       ) -> ComplexityReport:
    """Count params, BOPs, FLOPs, OPs and size of ``model`` on ``inputs``.

    The model is put in eval mode and run once (under ``torch.no_grad``)
    through mmengine's jit-tracing :class:`~mmengine.analysis.FlopAnalyzer`;
    lazily initialised quantizer scales are initialised by that pass, as by
    any first forward.

    Args:
        model: any module; segmentors are called as ``model(inputs)``, which
            for mmseg is ``mode='tensor'`` (backbone, neck, decode head).
        inputs: the forward input(s).
        groups: top-level module names to report (default: all children).
        exclude: groups reported but left out of the total (mmseg's
            ``get_flops`` drops the training-only auxiliary head likewise).

    Returns:
        :class:`ComplexityReport`.

    Raises:
        RuntimeError: if the binary MACs recorded by the hooks exceed what
            mmengine counted in that module (a counter that disagrees with the
            model code; fix the counter in :data:`MATMUL_COUNTERS`).
    """
    from mmengine.analysis import FlopAnalyzer

    if isinstance(inputs, Tensor):
        inputs = (inputs, )
    groups = list(default_groups(model) if groups is None else groups)
    model.eval()

    # hooks recording binary matmul MACs during the traced pass
    matmul_macs: Dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        counter = _find_counter(module)
        if counter is None:
            continue

        def record(macs: int, part: str = '', _name: str = name) -> None:
            where = f'{_name}.{part}' if part and _name else part or _name
            matmul_macs[where] = matmul_macs.get(where, 0) + int(macs)

        handles.extend(counter(module, record))
    try:
        # the model's operations as trained (FP norms, float products), not
        # the exact inference arithmetic's elementwise form of them
        with torch.no_grad(), exact_arithmetic(False), \
                warnings.catch_warnings():
            warnings.simplefilter('ignore')
            analyzer = FlopAnalyzer(model, inputs)
            analyzer.unsupported_ops_warnings(False)
            analyzer.uncalled_modules_warnings(False)
            analyzer.tracer_warnings('none')
            by_module_op = {k: dict(v) for k, v in
                            analyzer.by_module_and_operator().items()}
            mmengine_total = int(analyzer.total())
    finally:
        for h in handles:
            h.remove()

    names = [n for n, _ in model.named_modules()]
    own = _own_counts(by_module_op, names)
    modules = dict(model.named_modules())
    layers: List[Tuple[str, str, int]] = []
    bops_own: Dict[str, int] = {}
    for name, module in modules.items():
        if is_bop_layer(module):
            macs = sum(n for op, n in own.get(name, {}).items()
                       if op in _LAYER_OPS)
            if macs:
                bops_own[name] = macs
                layers.append((name, type(module).__name__, macs))
        if name in matmul_macs:
            macs = matmul_macs[name]
            avail = sum(n for op, n in own.get(name, {}).items()
                        if op in _LAYER_OPS)
            if macs > avail:
                raise RuntimeError(
                    f'{name} ({type(module).__name__}): the binary matmul '
                    f'counter recorded {macs} MACs but mmengine counted only '
                    f'{avail} matmul MACs in that module; the counter does '
                    'not match the module code')
            bops_own[name] = bops_own.get(name, 0) + macs
            layers.append((name, 'binary matmul', macs))

    report_groups: 'OrderedDict[str, Complexity]' = OrderedDict(
        (g, Complexity()) for g in groups)
    other = Complexity()

    def bucket(name: str) -> Complexity:
        g = _group_of(name, groups)
        return report_groups[g] if g is not None else other

    for name in names:
        flops = sum(own.get(name, {}).values())
        bops = bops_own.get(name, 0)
        c = bucket(name)
        c.flops += flops - bops
        c.bops += bops
    seen = set()
    for name, module in modules.items():
        c = bucket(name)
        c.scales += derived_scale_count(module)
        for pname, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            if pname == 'weight' and binary_weight(module):
                c.params_binary += p.numel()
            else:
                c.params_fp += p.numel()
    if other.params or other.flops or other.bops:
        report_groups['other'] = other
    return ComplexityReport(
        groups=report_groups,
        excluded=tuple(g for g in exclude if g in report_groups),
        mmengine_flops=mmengine_total,
        layers=layers,
        input_shape=tuple(inputs[0].shape))


class SegmentorTensorForward(nn.Module):
    """mmseg ``EncoderDecoder`` in ``mode='tensor'``, with the head *called*.

    mmseg's ``_forward`` calls ``decode_head.forward(x)`` directly, so the
    head's own resize ops would be attributed to the segmentor rather than
    the head. This wrapper computes the same ``decode_head(extract_feat(x))``
    and registers the segmentor's children under their own names, so module
    names and counts stay those of the segmentor.
    """

    def __init__(self, segmentor: nn.Module) -> None:
        super().__init__()
        self.__dict__['segmentor'] = segmentor  # not a child: names unchanged
        for name, child in segmentor.named_children():
            if name != 'data_preprocessor' and child is not None:
                self.add_module(name, child)

    def forward(self, inputs: Tensor) -> Tensor:
        return self.decode_head(self.segmentor.extract_feat(inputs))


def analysis_view(model: nn.Module) -> nn.Module:
    """:class:`SegmentorTensorForward` for mmseg encoder-decoders, else
    ``model`` itself."""
    if hasattr(model, 'extract_feat') and hasattr(model, 'decode_head'):
        return SegmentorTensorForward(model)
    return model


def analyze_config(config, shape: Tuple[int, int] = (512, 512),
                   batch_size: int = 1) -> ComplexityReport:
    """Build the model of ``config`` and analyse it on a random image batch.

    Args:
        config: config path, Config or dict.
        shape: input (H, W).
        batch_size: images per forward (counts are for the whole batch).
    """
    from .builder import build_segmentor
    model = build_segmentor(config)
    x = torch.rand(batch_size, 3, *shape)
    return analyze_complexity(analysis_view(model), x)


# --------------------------------------------------------------------------
# formatting
# --------------------------------------------------------------------------
def _fmt(x: float, unit: str = '') -> str:
    for div, suffix in ((1e12, 'T'), (1e9, 'G'), (1e6, 'M'), (1e3, 'K')):
        if abs(x) >= div:
            return f'{x / div:.3f}{suffix}{unit}'
    return f'{x:.0f}{unit}' if float(x).is_integer() else f'{x:.3f}{unit}'


_COLUMNS = ('params', 'binary', 'FP', 'BOPs', 'FLOPs', 'OPs', 'size')


def format_report(report: ComplexityReport, title: str = '') -> str:
    """Render a report as a fixed-width table (one row per group + total)."""
    rows = []
    for name, c in report.groups.items():
        label = name + (' (not in total)' if name in report.excluded else '')
        rows.append((label, c))
    rows.append(('total', report.total))
    head = ('group', ) + _COLUMNS
    body = [(label, _fmt(c.params), _fmt(c.params_binary), _fmt(c.params_fp),
             _fmt(c.bops), _fmt(c.flops), _fmt(c.ops),
             f'{c.size_mb:.3f}MB') for label, c in rows]
    widths = [max(len(r[i]) for r in [head] + body) for i in range(len(head))]
    lines = []
    if title:
        lines.append(title)
    lines.append('  '.join(h.ljust(w) if i == 0 else h.rjust(w)
                           for i, (h, w) in enumerate(zip(head, widths))))
    for r in body:
        lines.append('  '.join(v.ljust(w) if i == 0 else v.rjust(w)
                               for i, (v, w) in enumerate(zip(r, widths))))
    return '\n'.join(lines)


def ratios(binary: Complexity, fp: Complexity) -> Dict[str, float]:
    """Saving factors FP / binary of size, OPs, FLOPs and params (> 1: the
    binary model is smaller)."""

    def div(a: float, b: float) -> float:
        return float(a) / float(b) if b else float('inf')

    return dict(size=div(fp.size_bits, binary.size_bits),
                ops=div(fp.ops, binary.ops),
                flops=div(fp.flops, binary.flops),
                params=div(fp.params, binary.params))
