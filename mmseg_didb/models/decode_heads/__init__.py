from .binary_conv_module import (binarize_conv_modules,
                                 binary_unit_from_conv_module)
from .binary_heads import BinaryFCNHead, BinaryUPerHead

__all__ = [
    'BinaryUPerHead', 'BinaryFCNHead',
    'binarize_conv_modules', 'binary_unit_from_conv_module'
]
