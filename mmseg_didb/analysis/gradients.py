"""How much gradient the activation binarizers of a model let through.

A sign's surrogate gradient (clipped STE, ApproxSign, BiT's elastic window)
is zero outside a window around the threshold, so a binarizer whose input
lies mostly outside that window trains nothing behind it. This module runs one
training step's forward and backward and measures, with backward hooks on the
binarizers, the fraction of input elements that receive a gradient.

Only elements whose upstream gradient is non-zero count: a binarizer is
element-wise, so ``grad_in[i] = grad_out[i] * surrogate'(x[i])`` and the
fraction is ``#(grad_in != 0) / #(grad_out != 0)``. Elements that receive no
upstream gradient for other reasons (a dropped path of stochastic depth, an
ignored pixel) do not count against the binarizer.
"""
from typing import Dict, Optional

import torch
from torch import Tensor, nn

from ..binary.switch import iter_quantizers

__all__ = ['sign_gradient_coverage']


def sign_gradient_coverage(model: nn.Module, inputs: Tensor,
                           data_samples: list) -> Dict[str, Optional[float]]:
    """Fraction of each activation binarizer's input that gets a gradient.

    Args:
        model: an mmseg segmentor (it is put in train mode; its gradients are
            cleared afterwards).
        inputs: normalised images ``(B, 3, H, W)``.
        data_samples: mmseg ``SegDataSample``s with ``gt_sem_seg``.

    Returns:
        ``{quantizer name: fraction}`` for every enabled activation
        quantizer; None where no upstream gradient arrived at all.
    """
    counts: Dict[str, list] = {}
    hooks = []

    def make_hook(name: str):

        def hook(module, grad_in, grad_out):
            gi, go = grad_in[0], grad_out[0]
            if gi is None or go is None:
                return
            live = go != 0
            c = counts.setdefault(name, [0, 0])
            c[0] += int((gi != 0).logical_and(live).sum())
            c[1] += int(live.sum())

        return hook

    names = []
    for name, q in iter_quantizers(model, 'activation'):
        if q.enabled:
            names.append(name)
            hooks.append(q.register_full_backward_hook(make_hook(name)))
    model.train()
    try:
        losses = model.loss(inputs, data_samples)
        loss, _ = model.parse_losses(losses)
        loss.backward()
    finally:
        for h in hooks:
            h.remove()
        model.zero_grad(set_to_none=True)
    out: Dict[str, Optional[float]] = {}
    for name in names:
        passed, live = counts.get(name, (0, 0))
        out[name] = passed / live if live else None
    return out
