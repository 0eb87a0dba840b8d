"""The label map of a segmentor at deployment: resize and argmax fused.

mmseg predicts a label map by resizing the logits to the image
(``classes x H x W`` floats, bilinear, ``align_corners=False``) and taking
the argmax over the classes. :func:`resize_argmax` does both in one native
pass that never writes the resized logits (``csrc/label_map.h``); without
the C++ kernels it is that resize and argmax in PyTorch. The fused blends
round otherwise than PyTorch's interpolation, so a pixel whose two best
classes are within float rounding may take the other one.
"""
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import kernels

__all__ = ['resize_argmax', 'label_map']


def resize_argmax(logits: Tensor, size: Sequence[int]) -> Tensor:
    """``argmax_c resize(logits, size)`` for logits ``(N, C, h, w)``:
    int64 labels ``(N, H, W)``."""
    if logits.dim() != 4:
        raise ValueError('resize_argmax expects logits (N, C, h, w), got '
                         f'shape {tuple(logits.shape)}')
    h, w = int(size[0]), int(size[1])
    if kernels.kernels_available() and logits.device.type == 'cpu':
        return kernels._C.resize_argmax(logits, h, w)
    return F.interpolate(logits.float(), size=(h, w), mode='bilinear',
                         align_corners=False).argmax(dim=1)


def label_map(segmentor: nn.Module, image: Tensor) -> Tensor:
    """The label map of a normalised image batch ``(N, 3, H, W)`` (e.g. a
    packed model's): its logits (mmseg's ``mode='tensor'``) at the image
    size, through :func:`resize_argmax`."""
    with torch.no_grad():
        return resize_argmax(segmentor(image), image.shape[-2:])
