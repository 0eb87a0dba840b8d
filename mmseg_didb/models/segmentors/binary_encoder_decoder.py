"""Encoder-decoder segmentor with the training-time extras of binary models."""
from typing import Optional

import torch

from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS
from mmseg.utils import OptSampleList, SampleList
from torch import Tensor

from ..binary_model import BINARIZE_KEYS, DEFAULT_GRS, BinaryModelMixin

__all__ = ['BinaryEncoderDecoder', 'BINARIZE_KEYS', 'DEFAULT_GRS']


@MODELS.register_module()
class BinaryEncoderDecoder(BinaryModelMixin, EncoderDecoder):
    """mmseg ``EncoderDecoder`` plus GRS loss and a binarization switch.

    Inference (``predict``, ``_forward``, slide / whole inference) is
    inherited unchanged. Two training-time additions, shared with the
    classifier of the mmpretrain integration
    (:class:`~mmseg_didb.models.binary_model.BinaryModelMixin`):

    - GRS: ``loss_grs`` for the components (backbone, neck, heads) whose
      preset has ``grs=True``, ``grs`` setting its schedule;
    - ``binarize``: quantizer switches applied once at construction, e.g.
      ``binarize=dict(weights=False)`` for stage 1 of ReActNet's two-step
      training (checkpoints of both stages have identical keys, so stage 2
      loads stage 1 with ``load_from``).

    Args:
        grs (dict, optional): GRS schedule ``dict(weight=..., warmup_iters=
            ..., start_iter=0)`` (arguments of ``GRSSchedule``) for the
            components whose preset has ``grs=True``; None uses
            :data:`DEFAULT_GRS`. Giving it when no preset asks for GRS is an
            error.
        binarize (dict, optional): Keyword arguments of ``set_binarization``
            (``weights``, ``activations``, ``attention``; bool or None).
            None leaves every quantizer enabled (fully binary).
        Other args: see :class:`mmseg.models.segmentors.EncoderDecoder`.
    """

    binary_components = ('backbone', 'neck', 'decode_head', 'auxiliary_head')

    # a data-dependent Python check: torch.compile runs it eagerly
    @torch.compiler.disable
    def check_labels(self, data_samples: Optional[SampleList]) -> None:
        """Refuse label maps with values that are neither a class index nor
        the ignore index: the loss would fail with an index error (or read
        out of bounds on a GPU) and IoUMetric would drop those pixels
        silently.

        Raises:
            ValueError: naming the values found and what to check.
        """
        head = self.decode_head
        n, ignore = int(head.num_classes), int(head.ignore_index)
        for sample in data_samples or ():
            seg = getattr(sample, 'gt_sem_seg', None)
            if seg is None:
                continue
            labels = seg.data
            bad = (labels >= n) | (labels < 0)
            bad &= labels != ignore
            if bool(bad.any()):
                values = sorted(int(v) for v in labels[bad].unique()[:8])
                path = sample.metainfo.get('seg_map_path', 'a label map')
                raise ValueError(
                    f'{path} holds label values {values} outside the '
                    f'{n} classes [0, {n}) of the model (ignore index '
                    f'{ignore}). Check num_classes of the heads against the '
                    'dataset, reduce_zero_label (ADE20K-style maps use 0 '
                    "for 'other') and the ignore index.")

    def loss(self, inputs: Tensor, data_samples: SampleList) -> dict:
        """Segmentation losses of ``EncoderDecoder`` plus ``loss_grs``."""
        self.check_labels(data_samples)
        losses = super().loss(inputs, data_samples)
        losses.update(self.regularizer_losses())
        return losses

    def predict(self, inputs: Tensor,
                data_samples: OptSampleList = None) -> SampleList:
        """``EncoderDecoder.predict`` after :meth:`check_labels` (labels
        that metrics would drop silently are refused)."""
        self.check_labels(data_samples)
        return super().predict(inputs, data_samples)
