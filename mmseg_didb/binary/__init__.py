"""Framework-level 1-bit parts (plain PyTorch, no OpenMMLab import).

Quantizers, binary layers and units, (Token) RPReLU, the undecimated Haar
transform, the GRS-like regulariser, the run-time binarization switch and the
preset table shared by every model of the plugin.
"""
from .compact import compact_saves, compact_saves_enabled
from .exact import exact_arithmetic, exact_inference
from .haar import haar2d, haar_split, ihaar2d
from .layers import (BinaryConv2d, BinaryConvUnit, BinaryLinear,
                     BinaryLinearUnit, TokenNorm)
from .presets import PRESET_CHOICES, PRESETS, BinaryPreset, resolve_preset
from .quantizers import (ACT_QUANTIZERS, ATTN_QUANTIZERS, SAB,
                         WEIGHT_QUANTIZERS, ActivationQuantizer, ApproxSign,
                         ASMSign, AttentionQuantizer, BinaryQuantizer,
                         BWNWeight, ElasticSign, ElasticUnsigned,
                         PositiveAlpha, PWSWeight, ReActWeight, RSign,
                         RunningMagnitude, SignSTE, SignWeight,
                         WeightQuantizer, build_act_quantizer,
                         build_attn_quantizer, build_weight_quantizer, sign)
from .regularizers import GRSSchedule, binary_weight_layers, grs_loss
from .shortcuts import ChannelShortcut, ConvBypass, MergeShortcut
from .rprelu import (ChannelPReLU, RPReLU, TokenGrid, TokenRPReLU,
                     resize_token_map)
from .switch import (binarization, binarization_state, iter_quantizers,
                     set_binarization)

__all__ = [
    'compact_saves', 'compact_saves_enabled', 'exact_arithmetic',
    'exact_inference',
    'haar2d', 'ihaar2d', 'haar_split', 'BinaryLinear', 'BinaryConv2d',
    'ChannelShortcut', 'MergeShortcut', 'TokenNorm', 'BinaryLinearUnit',
    'ConvBypass',
    'BinaryConvUnit', 'BinaryPreset', 'PRESETS', 'PRESET_CHOICES',
    'resolve_preset', 'PositiveAlpha', 'RunningMagnitude', 'BinaryQuantizer',
    'ActivationQuantizer',
    'WeightQuantizer', 'AttentionQuantizer', 'sign', 'SignSTE', 'ApproxSign',
    'RSign', 'ElasticSign', 'ASMSign', 'SignWeight', 'ReActWeight',
    'BWNWeight', 'PWSWeight', 'ElasticUnsigned', 'SAB', 'WEIGHT_QUANTIZERS',
    'ACT_QUANTIZERS', 'ATTN_QUANTIZERS', 'build_weight_quantizer',
    'build_act_quantizer', 'build_attn_quantizer', 'grs_loss', 'GRSSchedule',
    'binary_weight_layers', 'ChannelPReLU', 'RPReLU', 'TokenGrid',
    'TokenRPReLU',
    'resize_token_map', 'set_binarization', 'binarization',
    'binarization_state', 'iter_quantizers'
]
