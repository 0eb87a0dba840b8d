"""Deployment of binary models on bit-packed kernels (plain PyTorch plus the
C++ extension ``mmseg_didb.deploy._C``; no OpenMMLab import).

* :mod:`.kernels`: sign packing and the XNOR-popcount / AND-popcount GEMMs
  and the binary convolution, native or pure PyTorch
  (:func:`kernels_available` says which).
* :mod:`.layers`: :class:`PackedBinaryLinear` and :class:`PackedBinaryConv2d`,
  built from trained binary layers with ``from_binary``.
* :mod:`.units`: :class:`PackedBinaryLinearUnit` and
  :class:`PackedBinaryConvUnit`, whole binary units with their FP tail
  (norm, shortcut, activation) fused into the kernel.
* :mod:`.convert`: :func:`convert_to_packed`, a whole model (segmentor,
  backbone, head) on packed layers and packed attention matmuls.
* :mod:`.labels`: :func:`label_map`, a segmentor's label map with the
  logits' resize and argmax fused (:func:`resize_argmax`).
"""
from .conv_kernels import binary_conv2d, pack_conv_input, pack_conv_weight
from .kernels import (UnitEpilogue, binary_linear, binary_linear_unit,
                      binary_matmul, kernel_variant, kernel_variants,
                      kernels_available, mask_matmul, pack_bits, pack_signs,
                      set_kernel_variant, unpack_signs, use_native)
from .attention import PackedAttention, PackedAttentionMatmuls
from .convert import PackReport, convert_to_packed
from .labels import label_map, resize_argmax
from .layers import InputBinarizer, PackedBinaryConv2d, PackedBinaryLinear
from .units import PackedBinaryConvUnit, PackedBinaryLinearUnit

__all__ = [
    'kernels_available', 'kernel_variant', 'kernel_variants',
    'set_kernel_variant', 'use_native', 'pack_signs', 'unpack_signs',
    'pack_bits', 'binary_matmul', 'binary_linear', 'binary_linear_unit',
    'mask_matmul', 'pack_conv_input', 'pack_conv_weight', 'binary_conv2d',
    'UnitEpilogue', 'InputBinarizer', 'PackedBinaryLinear',
    'PackedBinaryConv2d', 'PackedBinaryLinearUnit', 'PackedBinaryConvUnit',
    'convert_to_packed', 'PackedAttentionMatmuls', 'PackedAttention',
    'PackReport', 'resize_argmax', 'label_map'
]
