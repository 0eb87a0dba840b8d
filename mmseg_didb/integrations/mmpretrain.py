"""Classification pretraining of the binary backbones through mmpretrain.

Import with ``custom_imports = dict(imports=['mmseg_didb.integrations.
mmpretrain'])`` (configs/pretrain/ do). Registers in mmpretrain's ``MODELS``:

- :class:`BinaryImageClassifier`: mmpretrain's ``ImageClassifier`` with the
  binary models' training extras (the preset-driven GRS loss and the
  ``binarize`` switches of two-step training, as in the segmentor) and
  knowledge distillation from a frozen FP teacher (``distill``), the
  BinaryViT / ReActNet recipe: soft cross-entropy to the teacher's softmax.

mmpretrain has no distillation of its own (its DeiT head takes a distillation
token, but no teacher); any mmpretrain classifier config can be the teacher,
timm models included through mmpretrain's ``TimmClassifier``.

The backbone part of the resulting checkpoint (keys ``backbone.*``) loads
into the segmentation backbone strictly with
``init_cfg=dict(type='Pretrained', checkpoint=PATH, prefix='backbone.')``.
"""
from typing import Any, Dict, List, Optional

import torch
from mmpretrain.models import ImageClassifier
from mmpretrain.registry import MODELS
from torch import Tensor, nn

import mmseg_didb  # noqa: F401  registers the backbones (scope mmseg)
from mmseg_didb.models.binary_model import BinaryModelMixin
from mmseg_didb.models.losses import pixel_kd_loss
from mmseg_didb.models.segmentors.distill_encoder_decoder import (
    load_teacher_checkpoint, load_teacher_config)
from mmseg_didb.models.utils.config import option_dict

__all__ = ['BinaryImageClassifier', 'DISTILL_DEFAULTS']

#: keys of ``distill`` and their defaults (BinaryViT-Le: KD only, T = 1)
DISTILL_DEFAULTS = dict(teacher=None, checkpoint=None, temperature=1.0,
                        alpha=1.0, allow_unsafe_load=False)


@MODELS.register_module()
class BinaryImageClassifier(BinaryModelMixin, ImageClassifier):
    """``ImageClassifier`` with GRS, binarization switches and distillation.

    Args:
        grs (dict, optional): GRS schedule for the components (backbone,
            neck, head) whose preset has ``grs=True`` (see
            :class:`~mmseg_didb.models.binary_model.BinaryModelMixin`).
        binarize (dict, optional): quantizer switches, e.g.
            ``dict(weights=False)`` for stage 1 of two-step training.
        distill (dict, optional): distillation from a frozen teacher:
            ``teacher`` (an mmpretrain config path, ``'mmpretrain::...'``
            for one shipped with mmpretrain, or a model dict), ``checkpoint``
            (its local weights; required), ``temperature`` (T, default 1),
            ``alpha`` (weight of the KD term; the label loss gets
            ``1 - alpha``; default 1, BinaryViT-Le's KD-only loss) and
            ``allow_unsafe_load``. The teacher is built on the first
            training step and is not part of the checkpoint.
        Other args: see mmpretrain's ``ImageClassifier``.

    Example:
        >>> import mmseg_didb.integrations.mmpretrain  # noqa
        >>> from mmpretrain.registry import MODELS
        >>> model = MODELS.build(dict(
        ...     type='BinaryImageClassifier',
        ...     backbone=dict(type='mmseg.DIDBSwin', preset='didb',
        ...                   embed_dims=16, depths=(1, 1), num_heads=(1, 2),
        ...                   window_size=4, pretrain_img_size=32,
        ...                   out_indices=(1,)),
        ...     neck=dict(type='GlobalAveragePooling'),
        ...     head=dict(type='LinearClsHead', num_classes=4,
        ...               in_channels=32)))
        >>> model(torch.rand(2, 3, 32, 32), mode='tensor').shape
        torch.Size([2, 4])
    """

    binary_components = ('backbone', 'neck', 'head')

    def __init__(self, *args: Any, distill: Optional[dict] = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.distill = self._check_distill(distill)
        # a plain list keeps the teacher out of the module tree (and out of
        # the checkpoint)
        self._teacher_holder: List[nn.Module] = []

    @staticmethod
    def _check_distill(distill: Optional[dict]) -> Optional[dict]:
        if distill is None:
            return None
        cfg = dict(DISTILL_DEFAULTS, **option_dict(
            'distill', distill, DISTILL_DEFAULTS,
            'dict(teacher=..., checkpoint=...)'))
        if cfg['teacher'] is None or cfg['checkpoint'] is None:
            raise ValueError(
                'distill needs teacher= (an mmpretrain config or model dict) '
                'and checkpoint= (its local weights, e.g. an FP classifier '
                'trained first, or a model-zoo file downloaded beforehand); '
                'set model.distill=None to train on the labels alone.')
        if not 0.0 <= float(cfg['alpha']) <= 1.0:
            raise ValueError(f"distill alpha must be in [0, 1], got "
                             f"{cfg['alpha']}.")
        if float(cfg['temperature']) <= 0:
            raise ValueError('distill temperature must be > 0, got '
                             f"{cfg['temperature']}.")
        return cfg

    @property
    def teacher(self) -> nn.Module:
        """The frozen teacher, built from ``distill`` on first use."""
        if self.distill is None:
            raise AttributeError('no teacher: distill is None')
        if not self._teacher_holder:
            teacher = MODELS.build(load_teacher_config(
                self.distill['teacher']))
            load_teacher_checkpoint(teacher, self.distill['checkpoint'],
                                    bool(self.distill['allow_unsafe_load']))
            teacher.requires_grad_(False)
            self._teacher_holder.append(teacher.eval())
        return self._teacher_holder[0]

    def loss(self, inputs: Tensor, data_samples: list) -> Dict[str, Tensor]:
        """Label loss and/or KD loss, plus ``loss_grs`` when a preset asks."""
        feats = self.extract_feat(inputs)
        if self.distill is None:
            losses = self.head.loss(feats, data_samples)
        else:
            logits = self.head(feats)
            alpha = float(self.distill['alpha'])
            losses = {}
            if alpha < 1:
                losses = {k: v * (1 - alpha) if k.startswith('loss') else v
                          for k, v in self.head._get_loss(
                              logits, data_samples).items()}
            teacher = self.teacher.to(inputs.device)
            with torch.no_grad():
                target = teacher(inputs, mode='tensor')
            losses['loss_kd'] = alpha * pixel_kd_loss(
                logits, target, float(self.distill['temperature']),
                mode='soft_ce')
        losses.update(self.regularizer_losses())
        return losses
