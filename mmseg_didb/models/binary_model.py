"""Training-time extras shared by the plugin's binary models.

:class:`BinaryModelMixin` gives an OpenMMLab model (mmseg's
``EncoderDecoder``, mmpretrain's ``ImageClassifier``) the two switches the
preset table defines for a whole model: the GRS loss of the components whose
preset asks for it, and the quantizer switches of two-step training. The
segmentor (:class:`~mmseg_didb.models.segmentors.BinaryEncoderDecoder`) and
the classifier of the mmpretrain integration
(:class:`mmseg_didb.integrations.mmpretrain.BinaryImageClassifier`) both use
it, so ``grs`` and ``binarize`` mean the same in both.
"""
from typing import Any, Dict, List, Optional, Sequence

from mmengine.logging import MessageHub, print_log
from torch import Tensor, nn

from ..binary import (BinaryPreset, GRSSchedule, binary_weight_layers,
                      grs_loss, set_binarization)
from ..binary.switch import KINDS
from .utils.config import option_dict

__all__ = ['BinaryModelMixin', 'BINARIZE_KEYS', 'DEFAULT_GRS']

#: keyword arguments of ``set_binarization`` accepted in ``binarize``
BINARIZE_KEYS = tuple(KINDS)
#: GRS schedule used when a preset asks for GRS and ``grs`` is not given
DEFAULT_GRS = dict(weight=1.0, warmup_iters=0)


class BinaryModelMixin:
    """GRS loss and binarization switches for a model built of components.

    - GRS: when the preset of a component (backbone, neck, heads) has
      ``grs=True`` (the ``binaryvit`` row, or ``preset_overrides=dict(
      grs=True)``), the GRS-like regulariser
      (:func:`mmseg_didb.binary.regularizers.grs_loss`, BinaryViT-Xiao;
      docs/method.md, "GRS") over the binary weights of those components is
      added to the loss dict as ``loss_grs = lambda(t) * R``, with
      ``lambda(t)`` the linear ramp of
      :class:`~mmseg_didb.binary.regularizers.GRSSchedule` and ``t`` the
      training iteration read from mmengine's ``MessageHub``. The unweighted
      ``R`` is logged as ``grs_reg``. The preset decides *whether*; the
      ``grs`` argument only sets the schedule (default :data:`DEFAULT_GRS`).
    - ``binarize``: quantizer switches applied once at construction through
      :func:`mmseg_didb.binary.switch.set_binarization`, e.g.
      ``binarize=dict(weights=False)`` is stage 1 of ReActNet's two-step
      training. The switches are instance state, not parameters, so both
      stages' checkpoints have identical keys.

    The mixin comes first in the bases: its ``__init__`` takes ``grs`` and
    ``binarize`` and passes every other argument to the OpenMMLab model,
    which is then built as usual. A subclass names its components in
    ``binary_components``.
    """

    #: attribute names of the components whose preset can switch GRS on
    binary_components: Sequence[str] = ()

    def __init__(self, *args: Any, grs: Optional[dict] = None,
                 binarize: Optional[dict] = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.init_binary_extras(grs, binarize)

    def init_binary_extras(self, grs: Optional[dict],
                           binarize: Optional[dict]) -> None:
        """Build the GRS schedule and apply the binarization switches.

        Args:
            grs: GRS schedule ``dict(weight=..., warmup_iters=...,
                start_iter=0)`` for the components whose preset has
                ``grs=True``; None uses :data:`DEFAULT_GRS`. Giving it when
                no preset asks for GRS is an error.
            binarize: keyword arguments of ``set_binarization``
                (``weights``, ``activations``, ``attention``; bool or None).
                None leaves every quantizer enabled (fully binary).
        """
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
        for name in self.binary_components:
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
                    'or drop grs from the model config.')
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
        options = option_dict('binarize', binarize, BINARIZE_KEYS,
                              'dict(weights=False)')
        return {k: bool(v) for k, v in options.items() if v is not None}

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
