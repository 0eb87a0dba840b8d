"""Registers :class:`~mmseg_didb.binary.BinaryConv2d` in mmengine's root
``MODELS`` so mmcv's ``build_conv_layer`` / ``ConvModule`` can build it from
``conv_cfg=dict(type='BinaryConv2d', preset=...)`` in any scope (scoped
registries such as mmseg's fall back to the root)."""
from mmengine.registry import MODELS

from ..binary import BinaryConv2d

if 'BinaryConv2d' not in MODELS.module_dict:
    MODELS.register_module('BinaryConv2d', module=BinaryConv2d)
