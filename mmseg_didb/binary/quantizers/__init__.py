"""1-bit quantizers for weights, activations and attention probabilities.

Every quantizer is an :class:`torch.nn.Module` with a class attribute ``kind``
(``'weight'``, ``'activation'`` or ``'attention'``) and an instance flag
``enabled``. A disabled quantizer returns its input unchanged, so a layer whose
quantizers are all disabled is exactly its floating-point counterpart
(two-stage training, FP-equivalence tests; see
:mod:`mmseg_didb.binary.switch`).

Each equation lives in one place here:

* Activations: :class:`SignSTE` (BNN, Hubara et al. 2016, clipped STE),
  :class:`ApproxSign` (Bi-Real Net, Liu et al. ECCV 2018, Eq. 5),
  :class:`RSign` (ReActNet, Liu et al. ECCV 2020, Eq. 3),
  :class:`ElasticSign` (BiT, Liu et al. NeurIPS 2022, elastic binarization,
  Eq. 6-8) and :class:`ASMSign` (BinaryViT, Xiao et al. 2023, activation shift
  module; *reconstruction*, the formula is not public).
* Weights: :class:`SignWeight` (ReActNet / Bi-Real per-output-channel scale),
  :class:`ReActWeight` (BinaryViT, Le & Li CVPRW 2023, row-centred),
  :class:`BWNWeight` (BiT, per-tensor binary-weight network) and
  :class:`PWSWeight` (BiViT, He et al. ICCV 2023, learnable per-row scale).
* Attention probabilities: :class:`ElasticUnsigned` (BiT, {0, alpha} with an
  LSQ gradient for alpha) and :class:`SAB` (BiViT softmax-aware binarization).

``sign(0)`` is ``+1`` everywhere, so binary tensors never contain 0.

Mixed precision: inputs keep their dtype (learnable shifts and scales are cast
to the input dtype), while reductions that feed a gradient of a scalar
parameter (LSQ sums) are accumulated in float32.

Layout: autograd functions (``functions``), base classes (``base``), and one
module per kind (``activation``, ``weight``, ``attention``); this module
holds the name tables and the builders used by the presets.
"""
from typing import Callable, Dict, Optional, Type

from .activation import ApproxSign, ASMSign, ElasticSign, RSign, SignSTE
from .attention import SAB, ElasticUnsigned, prob_level_init
from .base import (ActivationQuantizer, AttentionQuantizer, BinaryQuantizer,
                   PositiveAlpha, RunningMagnitude, WeightQuantizer,
                   binary_level)
from .functions import sign
from .weight import BWNWeight, PWSWeight, ReActWeight, SignWeight

__all__ = [
    'PositiveAlpha', 'RunningMagnitude', 'BinaryQuantizer',
    'ActivationQuantizer', 'WeightQuantizer', 'AttentionQuantizer', 'sign',
    'binary_level', 'SignSTE', 'ApproxSign', 'RSign',
    'ElasticSign', 'ASMSign', 'SignWeight', 'ReActWeight', 'BWNWeight',
    'PWSWeight', 'ElasticUnsigned', 'SAB', 'WEIGHT_QUANTIZERS',
    'ACT_QUANTIZERS', 'ATTN_QUANTIZERS', 'build_weight_quantizer',
    'build_act_quantizer', 'build_attn_quantizer', 'prob_level_init'
]


WEIGHT_QUANTIZERS: Dict[str, Type[WeightQuantizer]] = {
    'sign': SignWeight,
    'react': ReActWeight,
    'bwn': BWNWeight,
    'pws': PWSWeight,
}
ACT_QUANTIZERS: Dict[str, Type[ActivationQuantizer]] = {
    'ste': SignSTE,
    'approx': ApproxSign,
    'rsign': RSign,
    'elastic': ElasticSign,
    'asm': ASMSign,
}
ATTN_QUANTIZERS: Dict[str, Type[AttentionQuantizer]] = {
    'elastic': ElasticUnsigned,
    'sab': SAB,
}


def _check_name(name: str, table: Dict[str, Callable], what: str) -> None:
    if name != 'fp' and name not in table:
        raise ValueError(f'unknown {what} quantizer {name!r}; valid: '
                         f"{['fp'] + sorted(table)}")


def build_weight_quantizer(name: str,
                           out_channels: Optional[int] = None
                           ) -> Optional[WeightQuantizer]:
    """Weight quantizer by name (``'fp'`` gives None)."""
    _check_name(name, WEIGHT_QUANTIZERS, 'weight')
    if name == 'fp':
        return None
    if name == 'pws':
        return PWSWeight(out_channels)
    return WEIGHT_QUANTIZERS[name]()


def build_act_quantizer(
        name: str,
        num_channels: Optional[int] = None,
        channel_dim: int = -1,
        input_scale: bool = False) -> Optional[ActivationQuantizer]:
    """Activation quantizer by name (``'fp'`` gives None).

    ``input_scale`` divides the input by a :class:`RunningMagnitude` first.
    """
    _check_name(name, ACT_QUANTIZERS, 'activation')
    if name == 'fp':
        return None
    return ACT_QUANTIZERS[name](num_channels, channel_dim,
                                input_scale=input_scale)


def build_attn_quantizer(name: str, num_keys: Optional[int] = None,
                         level_init: Optional[float] = None
                         ) -> Optional[AttentionQuantizer]:
    """Attention-probability quantizer by name (``'fp'`` gives None).

    ``num_keys`` (keys per query) sets the start value of a ``{0, a}``
    binarizer (:func:`prob_level_init`); ``level_init`` overrides it. SAB
    has no level and ignores both.
    """
    _check_name(name, ATTN_QUANTIZERS, 'attention')
    if name == 'fp':
        return None
    if name == 'elastic':
        return ElasticUnsigned(num_keys, level_init)
    return ATTN_QUANTIZERS[name](num_keys)
