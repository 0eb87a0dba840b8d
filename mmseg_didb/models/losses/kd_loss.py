"""Knowledge-distillation loss on logits (per pixel, or per image)."""
from typing import Optional

import torch.nn as nn
import torch.nn.functional as F
from mmseg.registry import MODELS
from torch import Tensor

KD_MODES = ('kl', 'soft_ce')


def pixel_kd_loss(student_logits: Tensor,
                  teacher_logits: Tensor,
                  temperature: float = 1.0,
                  mode: str = 'kl',
                  valid_mask: Optional[Tensor] = None) -> Tensor:
    """Distillation loss averaged over pixels (Hinton et al., 2015).

    With p_t = softmax(z_t / T) and log p_s = log_softmax(z_s / T) over the
    class dimension, per pixel:

    - ``'kl'``:      T^2 * sum_c p_t (log p_t - log p_s)  (KL(p_t || p_s))
    - ``'soft_ce'``: T^2 * sum_c -p_t log p_s             (soft cross-entropy)

    The two differ by the teacher entropy, a constant for the student, so they
    give the same gradients; ``'soft_ce'`` is what BinaryViT / ReActNet use for
    classification. The T^2 factor keeps gradient magnitudes independent of T.

    Args:
        student_logits (Tensor): (B, C, H, W) student logits, or (B, C)
            for image classification.
        teacher_logits (Tensor): (B, C, H', W') teacher logits, resized
            bilinearly to (H, W) when the sizes differ; or (B, C).
        temperature (float): Softmax temperature T > 0.
        mode (str): ``'kl'`` or ``'soft_ce'``.
        valid_mask (Tensor, optional): (B, H, W) boolean mask of pixels that
            count (resized nearest to the logits); the mean runs over these
            only. None = every pixel.

    Returns:
        Tensor: Scalar loss.
    """
    if mode not in KD_MODES:
        raise ValueError(f'Unknown KD mode {mode!r}; use one of {KD_MODES}.')
    if temperature <= 0:
        raise ValueError(f'temperature must be > 0, got {temperature}.')
    if student_logits.dim() not in (2, 4) or (teacher_logits.dim() !=
                                               student_logits.dim()):
        raise ValueError('pixel_kd_loss expects (B, C, H, W) or (B, C) '
                         f'logits, got {tuple(student_logits.shape)} and '
                         f'{tuple(teacher_logits.shape)}.')
    if student_logits.shape[:2] != teacher_logits.shape[:2]:
        raise ValueError(
            'Student and teacher logits must share batch size and number of '
            f'classes, got {tuple(student_logits.shape)} and '
            f'{tuple(teacher_logits.shape)}: check that the teacher config '
            'has the same num_classes as the student.')
    teacher_logits = teacher_logits.detach().to(student_logits.dtype)
    if teacher_logits.shape[2:] != student_logits.shape[2:]:
        teacher_logits = F.interpolate(
            teacher_logits,
            size=student_logits.shape[2:],
            mode='bilinear',
            align_corners=False)
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=1)
    p_t = log_p_t.exp()
    if mode == 'kl':
        per_pixel = (p_t * (log_p_t - log_p_s)).sum(dim=1)
    else:
        per_pixel = -(p_t * log_p_s).sum(dim=1)
    per_pixel = per_pixel * temperature**2
    if valid_mask is None:
        return per_pixel.mean()
    valid_mask = valid_mask.to(per_pixel.dtype)
    if valid_mask.shape != per_pixel.shape and per_pixel.dim() == 3:
        valid_mask = F.interpolate(
            valid_mask[:, None], size=per_pixel.shape[1:],
            mode='nearest')[:, 0]
    # clamp: an all-ignored batch gives 0, not NaN
    return (per_pixel * valid_mask).sum() / valid_mask.sum().clamp(min=1.0)


@MODELS.register_module()
class PixelKDLoss(nn.Module):
    """Module form of :func:`pixel_kd_loss` (weight * loss).

    Args:
        temperature (float): Softmax temperature. Defaults to 1.0.
        loss_weight (float): Multiplier of the loss. Defaults to 1.0.
        mode (str): ``'kl'`` or ``'soft_ce'``. Defaults to ``'kl'``.
        loss_name (str): Key of the loss in the loss dict; must contain
            ``'loss'`` to be part of the optimised total. Defaults to
            ``'loss_kd'``.
    """

    def __init__(self,
                 temperature: float = 1.0,
                 loss_weight: float = 1.0,
                 mode: str = 'kl',
                 loss_name: str = 'loss_kd') -> None:
        super().__init__()
        if mode not in KD_MODES:
            raise ValueError(
                f'Unknown KD mode {mode!r}; use one of {KD_MODES}.')
        if temperature <= 0:
            raise ValueError(f'temperature must be > 0, got {temperature}.')
        self.temperature = float(temperature)
        self.loss_weight = float(loss_weight)
        self.mode = mode
        self._loss_name = loss_name

    @property
    def loss_name(self) -> str:
        return self._loss_name

    def forward(self,
                student_logits: Tensor,
                teacher_logits: Tensor,
                valid_mask: Optional[Tensor] = None) -> Tensor:
        return self.loss_weight * pixel_kd_loss(
            student_logits, teacher_logits, self.temperature, self.mode,
            valid_mask)

    def extra_repr(self) -> str:
        return (f'temperature={self.temperature}, '
                f'loss_weight={self.loss_weight}, mode={self.mode!r}')

