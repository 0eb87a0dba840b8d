"""GRS-like weight regulariser (BinaryViT, Xiao et al., arXiv 2305.14730).

Reconstruction: BinaryViT-Xiao's gradient regularization scheme (GRS) pushes
latent weights away from the sign boundary so that they form two modes around
+-a_r, but its formula is not public. This module implements

    R = mean over enabled binary weight layers l of mean((|W_l'| - a_r)^2)

where W_l' is the tensor the layer's weight quantizer takes the sign of
(:meth:`~mmseg_didb.binary.quantizers.WeightQuantizer.latent`: W itself for
'sign', the row-centred W for 'react'/'pws', W - mean(W) for 'bwn') and a_r its
scale (:meth:`~mmseg_didb.binary.quantizers.WeightQuantizer.scale`), used as a
detached target. The loss weight lambda(t) ramps linearly from 0
(:class:`GRSSchedule`).
"""
from typing import Iterator, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

__all__ = ['binary_weight_layers', 'grs_loss', 'GRSSchedule']


def binary_weight_layers(module: nn.Module,
                         enabled_only: bool = True
                         ) -> Iterator[Tuple[str, nn.Module]]:
    """Yield ``(name, layer)`` for layers with a weight quantizer.

    A layer qualifies when it has a ``weight`` tensor and a
    ``weight_quantizer`` of kind 'weight' (enabled, unless ``enabled_only``
    is False).
    """
    for name, m in module.named_modules():
        q = getattr(m, 'weight_quantizer', None)
        w = getattr(m, 'weight', None)
        if (isinstance(q, nn.Module) and getattr(q, 'kind', None) == 'weight'
                and isinstance(w, Tensor)
                and (q.enabled or not enabled_only)):
            yield name, m


def grs_loss(modules: Union[nn.Module, Sequence[nn.Module]]) -> Tensor:
    """GRS-like regulariser of binary weights (reconstruction).

    ``R = mean_l mean((|W_l'| - a_r)^2)`` over the enabled binary weight layers
    of ``modules`` (one module or several; see the module docstring). Returns
    a float32 scalar on the weights' device; 0 (no gradient) when there are no
    enabled binary weights.
    """
    if isinstance(modules, nn.Module):
        modules = [modules]
    terms = []
    for module in modules:
        for _, m in binary_weight_layers(module):
            q, w = m.weight_quantizer, m.weight
            latent = q.latent(w)
            target = q.scale(w).detach()
            terms.append(((latent.abs() - target)**2).float().mean())
    if not terms:
        p = next((p for m in modules for p in m.parameters()), None)
        device = p.device if p is not None else None
        return torch.zeros((), device=device)
    return torch.stack(terms).mean()


class GRSSchedule:
    """Linear ramp of the GRS loss weight.

    ``lambda(t) = 0`` for ``t < start_iter``, then
    ``weight * min(1, (t - start_iter) / warmup_iters)`` (``weight`` at once
    when ``warmup_iters`` is 0).

    Args:
        weight: final loss weight (>= 0).
        warmup_iters: length of the ramp in iterations (>= 0).
        start_iter: first iteration of the ramp (>= 0).
    """

    def __init__(self, weight: float, warmup_iters: int,
                 start_iter: int = 0) -> None:
        if weight < 0 or warmup_iters < 0 or start_iter < 0:
            raise ValueError('GRSSchedule needs weight >= 0, warmup_iters '
                             f'>= 0 and start_iter >= 0, got {weight}, '
                             f'{warmup_iters}, {start_iter}')
        self.weight = float(weight)
        self.warmup_iters = int(warmup_iters)
        self.start_iter = int(start_iter)

    def __call__(self, it: int) -> float:
        if it < self.start_iter:
            return 0.0
        if self.warmup_iters == 0:
            return self.weight
        return self.weight * min(1.0,
                                 (it - self.start_iter) / self.warmup_iters)

    def __repr__(self) -> str:
        return (f'GRSSchedule(weight={self.weight}, warmup_iters='
                f'{self.warmup_iters}, start_iter={self.start_iter})')
