"""Encoder-decoder segmentor with the training-time extras of binary models."""
from typing import Dict, Optional

from mmengine.logging import MessageHub, print_log
from mmseg.models.segmentors import EncoderDecoder
from mmseg.registry import MODELS
from mmseg.utils import ConfigType, OptConfigType, OptMultiConfig, SampleList
from torch import Tensor

from ...binary import GRSSchedule, grs_loss, set_binarization
from ...binary.switch import KINDS

#: keyword arguments of ``set_binarization`` accepted in ``binarize``
BINARIZE_KEYS = tuple(KINDS)


@MODELS.register_module()
class BinaryEncoderDecoder(EncoderDecoder):
    """mmseg ``EncoderDecoder`` plus GRS loss and a binarization switch.

    Inference (``predict``, ``_forward``, slide / whole inference) is
    inherited unchanged. Two training-time additions:

    - ``grs``: the GRS-like regulariser of the 1-bit toolkit
      (:func:`mmseg_didb.binary.regularizers.grs_loss`, BinaryViT-Xiao; see
      its docstring for the reconstructed formula) is added to the loss dict
      as ``loss_grs = lambda(t) * R``, with ``lambda(t)`` the linear ramp of
      :class:`~mmseg_didb.binary.regularizers.GRSSchedule` and ``t`` the
      current training iteration read from mmengine's ``MessageHub``. The
      unweighted ``R`` is logged as ``grs_reg`` (a log value, not optimised).
    - ``binarize``: quantizer switches applied once at construction through
      :func:`mmseg_didb.binary.switch.set_binarization`, e.g.
      ``binarize=dict(weights=False)`` is stage 1 of ReActNet's two-step
      training (binary activations, FP weights). The switches are instance
      state, not parameters, so checkpoints of both stages have identical
      keys and stage 2 (``binarize=None``) loads stage 1 with ``load_from``.

    Args:
        grs (dict, optional): ``dict(weight=..., warmup_iters=...,
            start_iter=0)``, arguments of ``GRSSchedule``. None disables it.
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

    def _build_grs(self, grs: Optional[dict]) -> Optional[GRSSchedule]:
        if grs is None:
            return None
        if not isinstance(grs, dict) or 'weight' not in grs:
            raise ValueError(
                'grs must be None or dict(weight=..., warmup_iters=..., '
                f'start_iter=0), got {grs!r}.')
        schedule = GRSSchedule(**grs)
        if not any(getattr(m, 'kind', None) == 'weight'
                   for m in self.modules()):
            print_log(
                'grs is set but the model has no binary weight quantizer: '
                'loss_grs will stay 0. Use a binary preset (e.g. '
                "preset='binaryvit') or drop grs from the config.",
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
        reg = grs_loss(self)
        lam = float(self.grs_schedule(self.current_iter()))
        return {'loss_grs': reg * lam, 'grs_reg': reg.detach()}

    def loss(self, inputs: Tensor, data_samples: SampleList) -> dict:
        """Segmentation losses of ``EncoderDecoder`` plus ``loss_grs``."""
        losses = super().loss(inputs, data_samples)
        losses.update(self.regularizer_losses())
        return losses
