"""Switch weight / activation / attention binarization on and off at run time.

Needed for two-stage training (ReActNet, Liu et al. ECCV 2020: stage 1 binary
activations with FP weights, stage 2 fully binary) and for FP-equivalence
checks: a disabled quantizer is the identity, so a model with everything off
computes its FP counterpart of the same topology.
"""
import contextlib
from typing import Dict, Iterator, Optional, Union

from torch import nn

__all__ = ['KINDS', 'iter_quantizers', 'set_binarization', 'binarization',
           'binarization_state']

#: quantizer kinds and the keyword that switches them
KINDS: Dict[str, str] = {
    'weights': 'weight',
    'activations': 'activation',
    'attention': 'attention'
}


def iter_quantizers(module: nn.Module,
                    kind: Optional[str] = None) -> Iterator[tuple]:
    """Yield ``(name, quantizer)`` for every quantizer in ``module``.

    A quantizer is any submodule with a ``kind`` in {'weight', 'activation',
    'attention'} and an ``enabled`` flag; ``kind`` filters on it.
    """
    for name, m in module.named_modules():
        k = getattr(m, 'kind', None)
        if k in KINDS.values() and hasattr(m, 'enabled') and (kind is None
                                                              or k == kind):
            yield name, m


def set_binarization(module: nn.Module, weights: Optional[bool] = None,
                     activations: Optional[bool] = None,
                     attention: Optional[bool] = None) -> nn.Module:
    """Enable/disable every quantizer of a kind in ``module`` (None = leave).

    Example (ReActNet stage 1): ``set_binarization(model, weights=False)``.

    Returns:
        ``module`` (for chaining).
    """
    wanted = {'weight': weights, 'activation': activations,
              'attention': attention}
    for _, q in iter_quantizers(module):
        flag = wanted[q.kind]
        if flag is not None:
            q.enabled = bool(flag)
    return module


def binarization_state(module: nn.Module,
                       per_module: bool = False
                       ) -> Dict[str, Union[bool, None, str]]:
    """Binarization state of ``module``.

    Args:
        module: the model.
        per_module: return ``{quantizer name: enabled}`` instead of a summary.

    Returns:
        Summary ``{'weights': s, 'activations': s, 'attention': s}`` with
        s = True (all of that kind enabled), False (all disabled), 'mixed', or
        None (no quantizer of that kind); or the per-quantizer mapping.
    """
    if per_module:
        return {name: q.enabled for name, q in iter_quantizers(module)}
    summary: Dict[str, Union[bool, None, str]] = {}
    for key, kind in KINDS.items():
        flags = {q.enabled for _, q in iter_quantizers(module, kind)}
        summary[key] = (None if not flags else
                        flags.pop() if len(flags) == 1 else 'mixed')
    return summary


@contextlib.contextmanager
def binarization(module: nn.Module, weights: Optional[bool] = None,
                 activations: Optional[bool] = None,
                 attention: Optional[bool] = None) -> Iterator[nn.Module]:
    """Context manager: :func:`set_binarization`, restoring every quantizer's
    previous state on exit (also on error).

    Example: ``with binarization(model, weights=False, activations=False,
    attention=False): fp_out = model(x)``.
    """
    saved = [(q, q.enabled) for _, q in iter_quantizers(module)]
    try:
        yield set_binarization(module, weights, activations, attention)
    finally:
        for q, flag in saved:
            q.enabled = flag
