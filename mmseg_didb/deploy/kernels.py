"""Bit packing and bit-packed GEMM / convolution kernels, native or PyTorch.

Packing convention (shared by every function here and by the C++ kernels):
signs are packed along one axis into 64-bit words (``torch.int64``), element
``k`` in bit ``k % 64`` (least significant first) of word ``k // 64``; a bit
is 1 for ``x >= 0`` (the binarizers' ``sign(0) = +1``) and 0 for ``x < 0``.
A length ``K`` that is not a multiple of 64 leaves ``64 * ceil(K / 64) - K``
padding bits in the last word; they are **0 in every packed operand**, so
they XOR (and AND) to 0 and the dot products below, computed with the true
``K``, need no correction for them.

* ``binary_matmul(a, b, K)``: the exact integer dot products of the +-1
  vectors, ``K - 2 * popcount(a XOR b)`` (XNOR-popcount).
* ``mask_matmul(m, v, K)``: ``{0, 1}`` mask times +-1 vector,
  ``2 * popcount(m AND v) - popcount(m)`` (the ``Ab V`` product of binary
  attention, with ``v`` packed along the key axis).
* ``binary_conv2d`` (:mod:`.conv_kernels`): a convolution of +-1 inputs (zero
  padding = 0, which one bit cannot hold: the kernel corrects for it
  exactly, see the C++ source); the fused attention core is in
  :mod:`.attention`.
* ``binary_linear_unit`` / ``binary_conv2d(..., epilogue=...)``: the scaled
  products with the FP tail of a binary unit (:class:`UnitEpilogue`: norm,
  channel shortcut, (R)PReLU and Token RPReLU terms) applied to each output
  row while it is in cache.

The C++ extension ``mmseg_didb.deploy._C`` (built by the package set-up)
runs these with hardware popcount picked at run time (AVX-512 VPOPCNTDQ,
AVX2, POPCNT; the compiler's builtin elsewhere, e.g. ARM NEON), cache
blocking and ``torch.get_num_threads()`` threads. Without it, the
pure-PyTorch implementations in this module compute the same results (they
are also the reference the tests compare the native kernels with).
:func:`kernels_available` says which path is used.
"""
import os
from dataclasses import dataclass, fields
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..binary.exact import layer_norm_exact, mean_exact
from ..binary.shortcuts import group_mean

__all__ = [
    'kernels_available', 'kernel_variant', 'set_kernel_variant',
    'kernel_variants', 'use_native', 'pack_signs', 'unpack_signs',
    'pack_bits', 'binary_matmul', 'binary_linear', 'binary_linear_unit',
    'mask_matmul', 'UnitEpilogue', 'words_for'
]

try:  # the extension is optional: PyTorch kernels serve without it
    from . import _C  # type: ignore
except ImportError as e:  # pragma: no cover - depends on the build
    _C = None
    _IMPORT_ERROR: Optional[str] = str(e)
else:
    _IMPORT_ERROR = None

_ENV_DISABLE = 'MMSEG_DIDB_NO_KERNELS'
_native_on = _C is not None and os.environ.get(_ENV_DISABLE) != '1'


def kernels_available() -> bool:
    """True when the C++ kernels are built, importable and in use."""
    return _native_on


def use_native(flag: bool) -> None:
    """Switch between the C++ kernels (True) and the PyTorch ones (False).

    Raises:
        RuntimeError: ``flag=True`` but the extension is not built.
    """
    global _native_on
    if flag and _C is None:
        raise RuntimeError(
            'the bit-packed C++ kernels are not built '
            f'({_IMPORT_ERROR}); run the set-up (bash tools/setup_env.sh, '
            'or pip install -e . --no-build-isolation) to build them')
    _native_on = bool(flag)


def kernel_variant() -> str:
    """The kernel variant in use: an instruction set of the C++ kernels
    ('avx512_vpopcntdq', 'avx2', 'popcnt', 'neon', 'generic') or
    'pytorch'."""
    return _C.get_isa() if _native_on else 'pytorch'


def kernel_variants() -> List[str]:
    """Variants of the C++ kernels this CPU can run, best first."""
    return list(_C.supported_isas()) if _C is not None else []


def set_kernel_variant(name: str) -> None:
    """Force a C++ kernel variant (tests, benchmarks); see
    :func:`kernel_variants`."""
    if _C is None:
        raise RuntimeError('the C++ kernels are not built')
    _C.set_isa(name)


def words_for(k: int) -> int:
    """64-bit words holding ``k`` bits."""
    return (int(k) + 63) // 64


# --------------------------------------------------------------------------
# packing
# --------------------------------------------------------------------------
_BIT_WEIGHTS = None


def _bits_to_words(bits: Tensor) -> Tensor:
    """(..., K) bool -> (..., Kw) int64 words (PyTorch path)."""
    global _BIT_WEIGHTS
    k = bits.shape[-1]
    kw = words_for(k)
    pad = kw * 64 - k
    if pad:
        bits = F.pad(bits, (0, pad))
    b = bits.reshape(*bits.shape[:-1], kw, 2, 32).to(torch.int64)
    if _BIT_WEIGHTS is None:
        _BIT_WEIGHTS = torch.pow(2, torch.arange(32, dtype=torch.int64))
    halves = (b * _BIT_WEIGHTS.to(b.device)).sum(-1)  # two 32-bit halves
    return halves[..., 0] | (halves[..., 1] << 32)


def pack_bits(bits: Tensor, dim: int = -1) -> Tensor:
    """Pack a boolean tensor (True = bit 1) along ``dim`` into int64 words.

    The packed axis keeps its position, with ``ceil(K / 64)`` words.
    """
    if bits.dtype != torch.bool:
        raise TypeError(f'pack_bits expects a bool tensor, got {bits.dtype}')
    moved = bits.movedim(dim, -1)
    return _bits_to_words(moved).movedim(-1, dim)


def pack_signs(x: Tensor, dim: int = -1) -> Tensor:
    """Sign bits of ``x`` (1 for ``x >= 0``) packed along ``dim``.

    Args:
        x: a floating-point tensor.
        dim: the axis to pack (its length K becomes ``ceil(K / 64)`` words,
            padding bits 0).

    Returns:
        int64 tensor of the shape of ``x`` with ``dim`` of length
        ``ceil(K / 64)``.
    """
    if not x.is_floating_point():
        raise TypeError(f'pack_signs expects a float tensor, got {x.dtype}')
    moved = x.movedim(dim, -1)
    lead, k = moved.shape[:-1], moved.shape[-1]
    if _native_on and x.device.type == 'cpu' and k > 0:
        flat = moved.reshape(-1, k)
        out = _C.pack_rows(flat).reshape(*lead, words_for(k))
    else:
        out = _bits_to_words(moved >= 0)
    return out.movedim(-1, dim)


def unpack_signs(words: Tensor, k: int, dim: int = -1,
                 dtype: torch.dtype = torch.float32) -> Tensor:
    """Inverse of :func:`pack_signs`: {-1, +1} values of length ``k`` on
    ``dim``."""
    moved = words.movedim(dim, -1)
    shifts = torch.arange(64, device=words.device, dtype=torch.int64)
    bits = (moved.unsqueeze(-1) >> shifts) & 1
    bits = bits.reshape(*moved.shape[:-1], -1)[..., :k]
    return (bits.to(dtype) * 2 - 1).movedim(-1, dim)


def _pack_rows(x: Tensor, div: Optional[Tensor], add: Optional[Tensor],
               rows_per_group: int = 1) -> Tensor:
    """Rows (R, K): bits of ``x / div + add`` (div, add per column; add may
    be (G, K) for groups of ``rows_per_group`` rows)."""
    if add is not None and add.dim() == 1:
        rows_per_group = x.shape[0]  # one shift for every row
    if _native_on and x.device.type == 'cpu':
        return _C.pack_rows(x, div, add, rows_per_group)
    t = x.float()
    if div is not None:
        t = t / div.float()
    if add is not None:
        a = add.float().reshape(-1, x.shape[-1])
        t = (t.reshape(a.shape[0], -1, x.shape[-1]) + a[:, None]).reshape(
            t.shape)
    return _bits_to_words(t >= 0)


# --------------------------------------------------------------------------
# GEMMs
# --------------------------------------------------------------------------
def _as_batched(t: Tensor) -> Tuple[Tensor, Tuple[int, ...]]:
    lead = t.shape[:-2]
    return t.reshape(-1, *t.shape[-2:]), lead


def _check_k(kw: int, k: int) -> None:
    if not 64 * (kw - 1) < k <= 64 * kw:
        raise ValueError(f'K={k} does not fit {kw} packed words per row')


def binary_matmul(a: Tensor, b: Tensor, k: int) -> Tensor:
    """Exact integer dot products of packed +-1 rows: ``(..., M, N)`` int32.

    Args:
        a: ``(..., M, Kw)`` packed rows.
        b: ``(..., N, Kw)`` packed rows (leading dims equal to ``a``'s or
            absent).
        k: the true length K of the vectors.

    Returns:
        ``a_vec @ b_vec.T`` of the +-1 vectors, i.e.
        ``K - 2 * popcount(a XOR b)``.
    """
    _check_k(a.shape[-1], k)
    if b.shape[-1] != a.shape[-1]:
        raise ValueError('a and b must have the same number of words')
    a3, lead = _as_batched(a)
    b3, _ = _as_batched(b)
    if b3.shape[0] not in (1, a3.shape[0]):
        raise ValueError(f'batch of b ({tuple(b.shape[:-2])}) does not match '
                         f'a ({tuple(a.shape[:-2])})')
    if _native_on and a.device.type == 'cpu':
        out = _C.bgemm(a3, b3, k)
    else:
        ua = unpack_signs(a3, k, dtype=torch.float64)
        ub = unpack_signs(b3, k, dtype=torch.float64)
        out = (ua @ ub.transpose(-1, -2)).round().to(torch.int32)
    return out.reshape(*lead, a.shape[-2], b.shape[-2])


@dataclass
class UnitEpilogue:
    """The FP tail of a binary unit, applied to every output row ``y``:

    ``act(norm(y) + shortcut(res))`` with ``norm`` an eval-mode BatchNorm
    ``y * bn_scale + bn_shift`` or a LayerNorm with float64 statistics
    (``ln_weight``, ``ln_bias``, ``eps``), ``shortcut`` the channel map of
    :class:`~mmseg_didb.binary.ChannelShortcut` applied to the rows ``res``
    (identity, tiling, group mean with sizes ``res_count``), and ``act``
    ``PReLU_c(t - gamma_c - g'_n) + zeta_c + z'_n`` (``slope`` given: PReLU;
    plus ``gamma``/``zeta``: RPReLU; plus ``token_gamma``/``token_zeta``,
    one value per token of a sample, or ``dyn_gamma``/``dyn_zeta``: Token
    RPReLU, static or dynamic). Absent fields are skipped.

    :meth:`apply` is the PyTorch implementation (the fallback and the
    reference of the tests); the C++ kernels run the same operations in the
    GEMM's write-back.
    """
    bn_scale: Optional[Tensor] = None
    bn_shift: Optional[Tensor] = None
    ln_weight: Optional[Tensor] = None
    ln_bias: Optional[Tensor] = None
    eps: float = 1e-5
    res: Optional[Tensor] = None
    res_count: Optional[Tensor] = None
    slope: Optional[Tensor] = None
    gamma: Optional[Tensor] = None
    zeta: Optional[Tensor] = None
    token_gamma: Optional[Tensor] = None
    token_zeta: Optional[Tensor] = None
    dyn_gamma: Optional[Tensor] = None
    dyn_zeta: Optional[Tensor] = None

    def tensors(self) -> Dict[str, Tensor]:
        """The given tensor fields by name (the C++ kernels' ``epilogue``;
        ``eps`` goes beside it)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if isinstance(getattr(self, f.name), Tensor)}

    def apply(self, y: Tensor) -> Tensor:
        """The tail on float rows ``y`` ``(rows, N)``."""
        n = y.shape[-1]
        if self.bn_scale is not None:
            y = y * self.bn_scale + self.bn_shift
        if self.ln_weight is not None:
            y = layer_norm_exact(y, self.ln_weight, self.ln_bias, self.eps)
        if self.res is not None:
            y = y + _channel_map(self.res.float(), n, self.res_count)
        if self.slope is None:
            return y
        t = y
        if self.token_gamma is not None:
            reps = y.shape[0] // self.token_gamma.numel()
            tg = self.token_gamma.float().reshape(-1).repeat(reps)[:, None]
            tz = self.token_zeta.float().reshape(-1).repeat(reps)[:, None]
            t = t - tg
        if self.dyn_gamma is not None:
            mean = mean_exact(y, -1, keepdim=True)
            t = t - mean * self.dyn_gamma
        if self.gamma is not None:
            t = t - self.gamma
        t = torch.where(t >= 0, t, self.slope * t)
        if self.zeta is not None:
            t = t + self.zeta
        if self.token_gamma is not None:
            t = t + tz
        if self.dyn_gamma is not None:
            t = t + mean * self.dyn_zeta
        return t


def _channel_map(x: Tensor, n: int, count: Optional[Tensor]) -> Tensor:
    """ChannelShortcut's map of ``(rows, C)`` to ``n`` channels: identity,
    cyclic tiling or the mean of the groups ``{j, j + n, ...}``."""
    c = x.shape[-1]
    if c == n:
        return x
    if c < n:
        return x[:, torch.arange(n, device=x.device) % c]
    return group_mean(x, n, count, -1)


def binary_linear(a: Tensor, b: Tensor, k: int, scale: Tensor,
                  bias: Optional[Tensor] = None) -> Tensor:
    """``binary_matmul(a, b, k) * scale + bias`` in float32 (2-D ``a``, ``b``;
    ``scale`` and ``bias`` per output column), fused in the native kernel."""
    return binary_linear_unit(a, k, b, scale, bias)


def binary_linear_unit(x: Tensor, k: int, weight: Tensor, scale: Tensor,
                       bias: Optional[Tensor] = None,
                       div: Optional[Tensor] = None,
                       add: Optional[Tensor] = None, rows_per_group: int = 1,
                       epilogue: Optional[UnitEpilogue] = None) -> Tensor:
    """A binary linear (unit) on rows: ``epilogue(dot * scale + bias)``.

    Args:
        x: ``(rows, K)`` float rows, binarized and packed on the fly with the
            bit of ``x / div + add >= 0`` (``div`` per column, ``add`` per
            column or ``(groups, K)`` for groups of ``rows_per_group``
            rows), or ``(rows, Kw)`` packed words.
        k: K, the input features.
        weight: ``(N, Kw)`` packed weight rows.
        scale, bias: per output (``a_in * a_r`` and the layer bias).
        epilogue: the unit's FP tail, or None.

    Returns:
        ``(rows, N)`` float32.
    """
    if _native_on and x.device.type == 'cpu':
        ep = epilogue or UnitEpilogue()
        return _C.linear_unit(x, k, div, add, rows_per_group, weight, scale,
                              bias, ep.tensors(), ep.eps)
    bits = x if not x.is_floating_point() else _pack_rows(
        x, div, add, rows_per_group)
    y = binary_matmul(bits, weight, k).float() * scale.float()
    if bias is not None:
        y = y + bias.float()
    return epilogue.apply(y) if epilogue is not None else y


def mask_matmul(m: Tensor, v: Tensor, k: int) -> Tensor:
    """``{0, 1}`` mask rows times +-1 rows: ``(..., M, N)`` int32.

    Args:
        m: ``(..., M, Kw)`` packed masks (bit 1 = selected), e.g. the
            binarized attention probabilities of M queries over K keys.
        v: ``(..., N, Kw)`` packed signs along the same K axis, e.g. the
            binarized values transposed (one row per channel).
        k: K.

    Returns:
        ``sum_j m_ij v_nj`` = ``2 * popcount(m AND v) - popcount(m)``.
    """
    _check_k(m.shape[-1], k)
    m3, lead = _as_batched(m)
    v3, _ = _as_batched(v)
    if _native_on and m.device.type == 'cpu':
        out = _C.mask_gemm(m3, v3, k)
    else:
        um = (unpack_signs(m3, k, dtype=torch.float64) + 1) / 2
        uv = unpack_signs(v3, k, dtype=torch.float64)
        out = (um @ uv.transpose(-1, -2)).round().to(torch.int32)
    return out.reshape(*lead, m.shape[-2], v.shape[-2])
