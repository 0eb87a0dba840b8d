"""Which layers and matmuls of a model are binary (1-bit kernels), for the
complexity accounting of :mod:`.complexity` and the packed export."""
import math
from typing import Callable, Dict, Optional, Sequence

import torch
import torch.nn as nn

__all__ = [
    'is_binary_layer', 'binary_weight', 'binary_input', 'is_bop_layer',
    'derived_scale_count', 'MATMUL_COUNTERS', 'register_matmul_counter'
]


# --------------------------------------------------------------------------
# binary-layer introspection
# --------------------------------------------------------------------------
def _enabled(quantizer: Optional[nn.Module],
             kind: Optional[str] = None) -> bool:
    """Whether ``quantizer`` exists, is enabled and (optionally) is of
    ``kind``."""
    if quantizer is None or not bool(getattr(quantizer, 'enabled', True)):
        return False
    # nn.Identity placeholders (FP presets) have no ``kind``: not binary
    q_kind = getattr(quantizer, 'kind', None)
    return q_kind is not None and (kind is None or q_kind == kind)


def is_binary_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a linear/conv with (possibly disabled)
    quantizers."""
    return (isinstance(module, (nn.Linear, nn.modules.conv._ConvNd))
            and hasattr(module, 'weight_quantizer')
            and hasattr(module, 'input_quantizer'))


def binary_weight(module: nn.Module) -> bool:
    """Whether the weight of ``module`` is binarized (1 bit per weight)."""
    return is_binary_layer(module) and _enabled(module.weight_quantizer,
                                                'weight')


def binary_input(module: nn.Module) -> bool:
    """Whether the input of ``module`` is binarized by its own quantizer."""
    return is_binary_layer(module) and _enabled(module.input_quantizer,
                                                'activation')


def is_bop_layer(module: nn.Module) -> bool:
    """Binary weight *and* binary input: its MACs are BOPs."""
    return binary_weight(module) and binary_input(module)


def derived_scale_count(module: nn.Module) -> int:
    """Number of FP scales derived from a binary weight (0 if learnable).

    A learnable scale (e.g. PWS ``alpha``) is a parameter and already counted
    as FP; a derived one (``a_r`` = row mean of |W|) is not a parameter but is
    stored for inference.
    """
    if not binary_weight(module):
        return 0
    quantizer = module.weight_quantizer
    if any(True for _ in quantizer.parameters()):
        return 0
    with torch.no_grad():
        return int(quantizer.scale(module.weight).numel())


# --------------------------------------------------------------------------
# binary matmuls inside attention modules
# --------------------------------------------------------------------------
#: Counter = callable(module, record) -> list of hook handles, where
#: ``record(macs, part)`` adds binary matmul MACs executed in the own scope
#: of ``module`` (``part=''``) or of its child ``part``.
MatmulCounter = Callable[[nn.Module, Callable[..., None]], list]

#: Registered per class name (so the analysis never imports the models).
MATMUL_COUNTERS: Dict[str, MatmulCounter] = {}


def register_matmul_counter(class_name: str) -> Callable:
    """Register a binary-matmul counter for modules of class ``class_name``."""

    def wrap(fn: MatmulCounter) -> MatmulCounter:
        MATMUL_COUNTERS[class_name] = fn
        return fn

    return wrap


def _find_counter(module: nn.Module) -> Optional[MatmulCounter]:
    for cls in type(module).__mro__:
        if cls.__name__ in MATMUL_COUNTERS:
            return MATMUL_COUNTERS[cls.__name__]
    return None


def _numel(shape: Sequence) -> int:
    """Product of a shape whose entries may be traced 0-d tensors."""
    return int(math.prod(int(s) for s in shape))


@register_matmul_counter('DIDBAttention')
def _didb_attention_counter(module: nn.Module,
                            record: Callable[[int], None]) -> list:
    """Binary matmuls of :class:`~mmseg_didb.models.layers.DIDBAttention`.

    A hook on ``attn_quant`` sees the probabilities ``A`` of shape
    ``(windows * B, heads, N, N)`` once per attention call, which fixes both
    matmuls: every HFSC branch's ``Q K^T`` (in ``similarity``) costs
    ``numel(A) * d_qk`` MACs (``d_qk = qk_dims / heads``: the full head dim,
    or half of it for ``hfsc='split'``) and ``Ab V`` (in ``aggregation``)
    costs ``numel(A) * head_dims``. ``Q K^T`` is binary when every q/k
    binarizer is enabled, ``Ab V`` when ``attn_quant`` and ``v_quant`` are.
    """
    qs, ks, v_quant, attn_quant = module.matmul_binarizers()
    branches = len(qs)
    qk_binary = all(_enabled(q, 'activation') for q in qs + ks)
    av_binary = (_enabled(attn_quant, 'attention')
                 and _enabled(v_quant, 'activation'))
    if not (qk_binary or av_binary):
        return []
    d_qk = module.qk_dims // module.num_heads
    d_v = module.head_dims

    def hook(_m: nn.Module, args: tuple) -> None:
        n = _numel(args[0].shape)
        if qk_binary:
            record(n * d_qk * branches, 'similarity')
        if av_binary:
            record(n * d_v, 'aggregation')

    return [attn_quant.register_forward_pre_hook(hook)]
