"""Segmentor distilled from a frozen full-precision teacher segmentor."""
import os.path as osp
import warnings
from typing import List, Optional, Union

import torch
import torch.nn as nn
from mmengine.config import Config, ConfigDict
from mmengine.logging import print_log
from mmseg.registry import MODELS
from mmseg.utils import ConfigType, SampleList, add_prefix
from torch import Tensor

from ..losses import PixelKDLoss
from ..utils.checkpoint import load_whole_checkpoint
from ..utils.config import option_dict, package_config_path
from .binary_encoder_decoder import BinaryEncoderDecoder


def load_teacher_config(teacher_config: Union[str, dict, Config]) -> dict:
    """Return the teacher's model dict.

    Args:
        teacher_config: A config file path (``'pkg::rel/path.py'`` for configs
            shipped with an OpenMMLab package, e.g.
            ``'mmseg::swin/swin-tiny-...py'``), a full config (dict / Config
            with a ``model`` key) or a model dict (with a ``type`` key).
    """
    if isinstance(teacher_config, str):
        path = package_config_path(teacher_config)
        if not osp.isfile(path):
            raise FileNotFoundError(
                f'Teacher config {teacher_config!r} not found (looked at '
                f'{path}). Give a config file path, or '
                '"mmseg::<dir>/<file>.py"'
                ' for a config shipped with mmsegmentation.')
        teacher_config = Config.fromfile(path)
    if not isinstance(teacher_config, (dict, Config)):
        raise TypeError('teacher_config must be a path, a config or a model '
                        f'dict, got {type(teacher_config).__name__}.')
    if 'model' in teacher_config:
        model = teacher_config['model']
    elif 'type' in teacher_config:
        model = teacher_config
    else:
        raise ValueError('teacher_config has neither a "model" nor a "type" '
                         'key; pass a full config or a model dict.')
    return ConfigDict(model)


def load_teacher_checkpoint(teacher: nn.Module, checkpoint: str,
                            allow_unsafe: bool = False) -> None:
    """Load a segmentor checkpoint into the teacher, every key matched
    (weights-only unpickling unless ``allow_unsafe``)."""
    load_whole_checkpoint(
        teacher, checkpoint, allow_unsafe=allow_unsafe,
        hint='teacher_checkpoint must be the local file of a model trained '
        "with teacher_config: train the FP teacher first (its work_dir holds "
        "iter_*.pth) or download the mmseg model-zoo checkpoint of the "
        "teacher's config.")


def _channel_conversion(preprocessor: nn.Module) -> bool:
    """Whether a data preprocessor swaps BGR / RGB (mmseg or mmengine)."""
    return bool(
        getattr(preprocessor, 'channel_conversion',
                getattr(preprocessor, '_channel_conversion', False)))


@MODELS.register_module()
class DistillEncoderDecoder(BinaryEncoderDecoder):
    """``BinaryEncoderDecoder`` trained with per-pixel KD from an FP teacher.

    The training loss adds ``loss_kd`` = ``distill.weight`` x
    :func:`~mmseg_didb.models.losses.pixel_kd_loss` between the student's
    decode-head logits and the teacher's (resized to the student's logit
    size) to the segmentation (and GRS) losses. Inference is
    ``EncoderDecoder``'s, untouched.

    The teacher is built from its own config and checkpoint on first use
    (the first training step: testing the student needs no teacher files;
    only a missing ``teacher_checkpoint`` is rejected at construction) and
    kept outside the module tree: it is not in ``state_dict()`` (so never in a
    checkpoint), not in ``parameters()`` (so never in the optimizer), not
    touched by ``init_weights`` or ``train()``; it stays in eval mode with
    ``requires_grad=False`` and moves to the input's device on first use.
    Student and teacher inputs come from the student's data preprocessor; if
    the teacher's preprocessor uses another mean / std / channel order, the
    batch is re-normalised for it.

    Args:
        teacher_config (str | dict): Teacher config file (``'mmseg::...'``
            allowed), full config or model dict.
        teacher_checkpoint (str, optional): Local checkpoint of the teacher
            (mmengine / mmseg format, keys ``state_dict``). Required unless
            ``allow_random_teacher=True``.
        distill (dict): ``temperature`` (default 1.0), ``weight`` (default
            1.0), ``mode`` (``'kl'`` | ``'soft_ce'``, default ``'kl'``) and
            ``mask_ignored`` (default False: distil on every pixel, including
            those labelled ``ignore_index``).
        allow_random_teacher (bool): Permit ``teacher_checkpoint=None`` (a
            randomly initialised teacher; only meaningful in tests). Warns.
        teacher_allow_unsafe_load (bool): Load a teacher checkpoint that
            weights-only unpickling refuses with a full unpickle (trusted
            files only; logged).
        Other args: see :class:`BinaryEncoderDecoder`.
    """

    def __init__(self,
                 backbone: ConfigType,
                 decode_head: ConfigType,
                 teacher_config: Union[str, dict],
                 teacher_checkpoint: Optional[str] = None,
                 distill: Optional[dict] = None,
                 allow_random_teacher: bool = False,
                 teacher_allow_unsafe_load: bool = False,
                 **kwargs) -> None:
        super().__init__(backbone=backbone, decode_head=decode_head, **kwargs)
        distill = option_dict('distill', distill,
                              ('temperature', 'weight', 'mode',
                               'mask_ignored'), "dict(mode='kl')")
        self.mask_ignored = bool(distill.pop('mask_ignored', False))
        self.kd_loss = PixelKDLoss(
            temperature=distill.get('temperature', 1.0),
            loss_weight=distill.get('weight', 1.0),
            mode=distill.get('mode', 'kl'),
            loss_name='loss_kd')
        self._teacher_spec = (teacher_config, teacher_checkpoint,
                              bool(allow_random_teacher),
                              bool(teacher_allow_unsafe_load))
        if teacher_checkpoint is None and not allow_random_teacher:
            raise ValueError(
                'DistillEncoderDecoder needs teacher_checkpoint: train the FP '
                'teacher (or download its model-zoo checkpoint) and set '
                'model.teacher_checkpoint to the file. allow_random_teacher='
                'True accepts a random teacher, for tests only.')
        # a plain list keeps the teacher out of the module tree
        self._teacher_holder: List[nn.Module] = []
        # teacher logits of the batch in ``loss``, read by the decode head
        self._kd_target: Optional[Tensor] = None

    def _build_teacher(self, teacher_config: Union[str, dict],
                       teacher_checkpoint: Optional[str],
                       allow_random_teacher: bool,
                       allow_unsafe: bool = False) -> nn.Module:
        model_cfg = load_teacher_config(teacher_config)
        teacher = MODELS.build(model_cfg)
        if teacher_checkpoint is not None:
            load_teacher_checkpoint(teacher, teacher_checkpoint, allow_unsafe)
        else:
            msg = ('DistillEncoderDecoder: teacher_checkpoint is None, the FP '
                   'teacher has RANDOM weights and the distillation target '
                   'is meaningless. Only use allow_random_teacher=True in '
                   'tests.')
            warnings.warn(msg, UserWarning, stacklevel=3)
            print_log(msg, logger='current', level=30)
        if not hasattr(teacher, '_forward') or not hasattr(
                teacher, 'extract_feat'):
            raise TypeError('The teacher must be an mmseg segmentor such as '
                            f'EncoderDecoder, got {type(teacher).__name__}.')
        if teacher.num_classes != self.num_classes:
            raise ValueError(
                f'Teacher predicts {teacher.num_classes} classes, the student '
                f'{self.num_classes}; they must agree for distillation.')
        teacher.requires_grad_(False)
        teacher.eval()
        return teacher

    @property
    def teacher(self) -> nn.Module:
        """The frozen teacher (not a registered submodule).

        Built and loaded on first use (the first training step), so testing
        or deploying the student never needs the teacher's files.
        """
        if not self._teacher_holder:
            self._teacher_holder.append(
                self._build_teacher(*self._teacher_spec))
        return self._teacher_holder[0]

    def train(self, mode: bool = True) -> 'DistillEncoderDecoder':
        super().train(mode)
        if self._teacher_holder:
            self._teacher_holder[0].eval()
        return self

    def _teacher_inputs(self, inputs: Tensor) -> Tensor:
        """Re-normalise the student's batch for the teacher if needed."""
        s_pre, t_pre = self.data_preprocessor, self.teacher.data_preprocessor
        s_norm = getattr(s_pre, '_enable_normalize', False)
        t_norm = getattr(t_pre, '_enable_normalize', False)
        s_flip, t_flip = _channel_conversion(s_pre), _channel_conversion(t_pre)
        same = s_norm == t_norm and s_flip == t_flip and (
            not s_norm or (torch.equal(s_pre.mean.cpu(), t_pre.mean.cpu())
                           and torch.equal(s_pre.std.cpu(), t_pre.std.cpu())))
        if same:
            return inputs
        raw = inputs * s_pre.std + s_pre.mean if s_norm else inputs
        if s_flip != t_flip:
            raw = raw.flip(1)
        if t_norm:
            raw = (raw - t_pre.mean.to(raw)) / t_pre.std.to(raw)
        return raw

    @torch.no_grad()
    def teacher_logits(self, inputs: Tensor) -> Tensor:
        """Teacher decode-head logits (before resizing) for a batch."""
        teacher = self.teacher
        param = next(teacher.parameters(), None)
        if param is not None and param.device != inputs.device:
            teacher.to(inputs.device)
        teacher.eval()
        logits = teacher._forward(self._teacher_inputs(inputs))
        if not isinstance(logits, Tensor):
            raise TypeError('The teacher decode head must return a logits '
                            f'tensor, got {type(logits).__name__}.')
        return logits

    def _valid_mask(self, data_samples: SampleList) -> Optional[Tensor]:
        if not self.mask_ignored:
            return None
        labels = torch.stack(
            [s.gt_sem_seg.data for s in data_samples]).squeeze(1)
        return labels != self.decode_head.ignore_index

    def loss(self, inputs: Tensor, data_samples: SampleList) -> dict:
        """CE (+ aux) losses, ``loss_kd`` and, if enabled, ``loss_grs``."""
        # teacher first: built on first use, its random init (tests) must not
        # shift the RNG state the student forward sees
        self._kd_target = self.teacher_logits(inputs)
        try:
            return super().loss(inputs, data_samples)
        finally:
            self._kd_target = None

    def _decode_head_forward_train(self, inputs: List[Tensor],
                                   data_samples: SampleList) -> dict:
        """Decode-head losses plus ``loss_kd`` against the teacher logits."""
        # BaseDecodeHead.loss is forward + loss_by_feat; split here so the
        # same student logits feed both CE and KD
        seg_logits = self.decode_head.forward(inputs)
        losses = add_prefix(
            self.decode_head.loss_by_feat(seg_logits, data_samples), 'decode')
        losses['loss_kd'] = self.kd_loss(seg_logits, self._kd_target,
                                         self._valid_mask(data_samples))
        return losses
