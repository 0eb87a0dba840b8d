"""Encoder-decoder segmentor with the training-time extras of binary models."""
from typing import Dict, List, Optional

from mmengine.logging import MessageHub, print_log
from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS
from mmseg.utils import (ConfigType, OptConfigType, OptMultiConfig,
                         OptSampleList, SampleList)
from torch import Tensor, nn

from ...binary import (BinaryPreset, GRSSchedule, binary_weight_layers,
                       grs_loss, set_binarization)
from ...binary.switch import KINDS

#: keyword arguments of ``set_binarization`` accepted in ``binarize``
BINARIZE_KEYS = tuple(KINDS)
#: GRS schedule used when a preset asks for GRS and ``grs`` is not given
DEFAULT_GRS = dict(weight=1.0, warmup_iters=0)
#: segmentor children whose ``preset`` can switch GRS on
_COMPONENTS = ('backbone', 'neck', 'decode_head', 'auxiliary_head')


@MODELS.register_module()
class BinaryEncoderDecoder(EncoderDecoder):
    """mmseg ``EncoderDecoder`` plus GRS loss and a binarization switch.

    Inference (``predict``, ``_forward``, slide / whole inference) is
    inherited unchanged. Two training-time additions:

    - GRS: when the preset of a component (backbone, neck, heads) has
      ``grs=True`` (the ``binaryvit`` row, or ``preset_overrides=dict(
      grs=True)``), the GRS-like regulariser of the 1-bit toolkit
      (:func:`mmseg_didb.binary.regularizers.grs_loss`, BinaryViT-Xiao; see
      its docstring for the reconstructed formula) over the binary weights of
      those components is added to the loss dict as ``loss_grs =
      lambda(t) * R``, with ``lambda(t)`` the linear ramp of
      :class:`~mmseg_didb.binary.regularizers.GRSSchedule` and ``t`` the
      current training iteration read from mmengine's ``MessageHub``. The
      unweighted ``R`` is logged as ``grs_reg`` (a log value, not optimised).
      The preset decides *whether*; the ``grs`` argument only sets the
      schedule (default :data:`DEFAULT_GRS`).
    - ``binarize``: quantizer switches applied once at construction through
      :func:`mmseg_didb.binary.switch.set_binarization`, e.g.
      ``binarize=dict(weights=False)`` is stage 1 of ReActNet's two-step
      training (binary activations, FP weights). The switches are instance
      state, not parameters, so checkpoints of both stages have identical
      keys and stage 2 (``binarize=None``) loads stage 1 with ``load_from``.

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

    def __init__(self,
                 backbone: ConfigType,
                 decode_head: ConfigType,
                 neck: OptConfigType = None,
                 auxiliary_head: OptConfigType = None,
                 train_cfg: OptConfigType = None,
                 test_cfg: OptConfigType = None,
                 data_preprocessor: OptConfigType = None,
                 pretrained: Optional[str] = None,
                 init_cfg: OptMultiConfig = None,
                 grs: Optional[dict] = None,
                 binarize: Optional[dict] = None) -> None:
        super().__init__(
            backbone=backbone,
            decode_head=decode_head,
            neck=neck,
            auxiliary_head=auxiliary_head,
            train_cfg=train_cfg,
            test_cfg=test_cfg,
            data_preprocessor=data_preprocessor,
            pretrained=pretrained,
            init_cfg=init_cfg)
        self.grs_schedule = self._build_grs(grs)
        self.binarize = self._check_binarize(binarize)
        if self.binarize:
            set_binarization(self, **self.binarize)
            print_log(
                f'{type(self).__name__}: binarization ' + ', '.join(
                    f'{k}={"on" if v else "off"}'
                    for k, v in self.binarize.items()),
                logger='current')

    def grs_modules(self) -> List[nn.Module]:
        """The components whose preset has ``grs=True`` (the GRS targets)."""
        found = []
        for name in _COMPONENTS:
            parts = getattr(self, name, None)
            if parts is None:
                continue
            if not isinstance(parts, nn.ModuleList):
                parts = [parts]
            for m in parts:
                preset = getattr(m, 'preset', None)
                if isinstance(preset, BinaryPreset) and preset.grs:
                    found.append(m)
        return found

    def _build_grs(self, grs: Optional[dict]) -> Optional[GRSSchedule]:
        if grs is not None and (not isinstance(grs, dict)
                                or 'weight' not in grs):
            raise ValueError(
                'grs must be None or dict(weight=..., warmup_iters=..., '
                f'start_iter=0), got {grs!r}.')
        if not self.grs_modules():
            if grs is not None:
                raise ValueError(
                    'grs sets the GRS schedule, but no component preset asks '
                    "for GRS: use preset='binaryvit' or add "
                    'preset_overrides=dict(grs=True) to the backbone / heads, '
                    'or drop grs from the segmentor config.')
            return None
        schedule = GRSSchedule(**(DEFAULT_GRS if grs is None else grs))
        if not any(True for m in self.grs_modules()
                   for _ in binary_weight_layers(m)):
            print_log(
                'a preset asks for GRS but its components have no binary '
                'weight quantizer: loss_grs will stay 0.',
                logger='current', level=30)
        return schedule

    @staticmethod
    def _check_binarize(binarize: Optional[dict]) -> Dict[str, bool]:
        if binarize is None:
            return {}
        if not isinstance(binarize, dict):
            raise TypeError('binarize must be a dict such as '
                            f'dict(weights=False), got {binarize!r}.')
        unknown = set(binarize) - set(BINARIZE_KEYS)
        if unknown:
            raise ValueError(f'Unknown binarize keys {sorted(unknown)}; '
                             f'valid keys are {list(BINARIZE_KEYS)}.')
        return {k: bool(v) for k, v in binarize.items() if v is not None}

    @staticmethod
    def current_iter() -> int:
        """Training iteration as published by mmengine's RuntimeInfoHook."""
        return int(MessageHub.get_current_instance().get_info('iter', 0))

    def regularizer_losses(self) -> Dict[str, Tensor]:
        """GRS loss terms for the current iteration (empty if disabled)."""
        if self.grs_schedule is None:
            return {}
        reg = grs_loss(self.grs_modules())
        lam = float(self.grs_schedule(self.current_iter()))
        return {'loss_grs': reg * lam, 'grs_reg': reg.detach()}

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
