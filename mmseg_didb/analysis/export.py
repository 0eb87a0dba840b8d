"""Packed 1-bit export of binary models, and its loader.

Format (a ``torch.save`` dict, loadable with ``weights_only=True``)::

    {'format': 'mmseg_didb.packed', 'version': 1,
     'binary': {layer: {'bits': uint8 (sign bits, 8 per byte, row-major),
                        'shape': int64 weight shape,
                        'scale': FP scale a_r (quantizer.scale(W))}},
     'fp': {name: tensor}     # every other state-dict entry, unchanged
     'config': str            # model config text (optional)}

``bits`` are the *binarized* pattern, i.e. ``sign(latent(W))`` with the
quantizer's own latent (``W - rowmean(W)`` for the react-centred binarizer,
``W - mean(W)`` for BWN, ``W`` for plain sign) and ``sign(0) = +1``; bit 1
means ``+1``. A layer is stored packed when its weight quantizer is enabled.

What is recoverable: the binary weight ``Wb = a_r * sign(latent(W))`` exactly,
and every FP parameter and buffer exactly, so the reloaded model computes the
same outputs in eval mode. What is not: the latent FP weights of binary layers
(only their binarized pattern and scale are kept), so the export is for
inference; training resumes from the regular checkpoint. The loader writes the
latent weight ``W' = x_r * pattern`` with ``x_r`` tuned (to the last float bit)
so that the quantizer recomputes the stored ``a_r``. Where float rounding of
that mean makes the exact value unreachable, the layer's quantizer is wrapped
in :class:`FrozenScaleWeight`, which uses the stored ``a_r`` as a constant, as
an inference kernel does; the binary weight is then identical by
construction.
"""
import io
import os
from typing import Dict, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from .binary_ops import binary_weight

FORMAT = 'mmseg_didb.packed'
VERSION = 1
_NUDGE_STEPS = 16


def pack_signs(pattern: Tensor) -> Tensor:
    """Pack a boolean tensor (True = +1) into uint8, 8 signs per byte."""
    bits = np.packbits(pattern.detach().cpu().reshape(-1).numpy().astype(
        np.uint8))
    return torch.from_numpy(bits)


def unpack_signs(bits: Tensor, shape: Tuple[int, ...]) -> Tensor:
    """Inverse of :func:`pack_signs`: a {-1, +1} float32 tensor of
    ``shape``."""
    n = int(np.prod(shape))
    flat = np.unpackbits(bits.cpu().numpy(), count=n).astype(np.float32)
    return torch.from_numpy(flat * 2 - 1).reshape(shape)


def binary_pattern(quantizer: nn.Module, weight: Tensor) -> Tensor:
    """Boolean sign pattern (True = +1) of the binarized weight."""
    return quantizer.latent(weight.detach()) >= 0


def binarized(quantizer: nn.Module, weight: Tensor) -> Tensor:
    """``scale(W) * sign(latent(W))``: the quantizer's forward value, computed
    without calling forward (which may initialise lazy scales)."""
    sgn = torch.where(quantizer.latent(weight) >= 0, 1.0, -1.0)
    sgn = sgn.to(weight.dtype)
    return sgn * quantizer.scale(weight).to(weight.dtype)


def latent_from_binary(quantizer: nn.Module, signs: Tensor,
                       scale: Tensor) -> Tensor:
    """A latent weight that ``quantizer`` binarizes to ``scale * signs``.

    ``W' = x_r * signs`` with ``x_r = a_r`` gives the right pattern, but the
    quantizer recomputes ``a_r`` as a mean of ``|W'|``, which can round one
    float step away from the stored value. Each group of weights sharing a
    scale (a row, or the whole tensor) is therefore fine-tuned: its magnitude
    steps down while the recomputed scale is too large, then the first ``k``
    entries are raised by one float step, with ``k`` found by bisection, until
    the recomputed scale equals ``a_r`` bit for bit. Scales that do not depend
    on W (learnable ``alpha``) are returned as they are.
    """
    shape = signs.shape
    scale = scale.to(signs.dtype)
    groups = scale.numel()
    if groups not in (1, shape[0]) or signs.numel() % groups:
        return scale * signs  # unknown scale layout: no fine-tuning
    n = signs.numel() // groups
    flat_signs = signs.reshape(groups, n)
    target = scale.reshape(groups, 1)

    def recompute(mag: Tensor) -> Tensor:
        w = (mag * flat_signs).reshape(shape)
        return quantizer.scale(w).detach().to(mag.dtype).reshape(groups, 1)

    inf = torch.full_like(target, float('inf'))
    mag = target.expand(groups, n).clone()
    for _ in range(_NUDGE_STEPS):  # coarse: whole group one step down
        got = recompute(mag)
        high = got > target
        if not bool(high.any()):
            break
        mag = torch.where(high, torch.nextafter(mag, torch.zeros_like(mag)),
                          mag)
    got = recompute(mag)
    low = (got < target).reshape(-1)
    if bool(low.any()):  # fine: raise the first k entries one step
        base = mag[:, :1]
        up = torch.nextafter(base, inf)
        idx = torch.arange(n, device=mag.device).unsqueeze(0)
        lo = torch.zeros(groups, dtype=torch.long, device=mag.device)
        hi = torch.where(low, torch.full_like(lo, n), torch.ones_like(lo))
        # invariant: got(lo) < target (or lo = 0); the smallest k with
        # got(k) >= target lies in (lo, hi]
        while bool((hi - lo > 1).any()):
            mid = (lo + hi) // 2
            trial = torch.where(idx < mid.unsqueeze(1), up, base)
            ge = (recompute(trial) >= target).reshape(-1)
            hi = torch.where(low & ge, mid, hi)
            lo = torch.where(low & ~ge, mid, lo)
        k = torch.where(low, hi, torch.zeros_like(hi))
        mag = torch.where(idx < k.unsqueeze(1), up, base)
    return (mag * flat_signs).reshape(shape)


class FrozenScaleWeight(nn.Module):
    """Inference weight binarizer with a constant scale,
    ``a_r * sign(latent(W))``.

    Wraps a restored layer's quantizer when the stored ``a_r`` cannot be
    recomputed bit-exactly from any latent weight with the stored pattern
    (float rounding of a mean). Same ``kind``, ``enabled``, ``latent`` and
    ``scale`` interface as the wrapped quantizer; the scale is a buffer
    ``frozen_scale``. Inference only: it passes no gradient to the scale.

    Args:
        quantizer: the model's weight quantizer (its ``latent`` is reused).
        scale: the stored scale ``a_r``, broadcastable to the weight.
    """
    kind = 'weight'

    def __init__(self, quantizer: nn.Module, scale: Tensor) -> None:
        super().__init__()
        self.enabled = bool(getattr(quantizer, 'enabled', True))
        # a plain attribute, not a submodule: state-dict keys stay unchanged
        self.__dict__['_inner'] = quantizer
        self.register_buffer('frozen_scale', scale.detach().clone())

    def latent(self, w: Tensor) -> Tensor:
        return self._inner.latent(w)

    def scale(self, w: Tensor) -> Tensor:
        return self.frozen_scale

    def forward(self, w: Tensor) -> Tensor:
        if not self.enabled:
            return w
        return binarized(self, w)

    def extra_repr(self) -> str:
        return f'{type(self._inner).__name__}, enabled={self.enabled}'


def _binary_layers(model: nn.Module) -> Dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if binary_weight(m)}


def pack_model(model: nn.Module, config: Optional[str] = None) -> dict:
    """Build the packed representation of ``model`` (see module docstring).

    Args:
        model: the trained model (its latent weights are read, not changed).
        config: optional config text stored with the weights.

    Returns:
        dict with keys ``format``, ``version``, ``binary``, ``fp`` and
        ``config``.
    """
    state = model.state_dict()
    binary = {}
    for name, layer in _binary_layers(model).items():
        q = layer.weight_quantizer
        with torch.no_grad():
            w = layer.weight.detach()
            if not bool(getattr(q, 'initialized', True)):
                q(w)  # lazy scale init, exactly as the first forward does
            key = f'{name}.weight' if name else 'weight'
            binary[key] = dict(
                bits=pack_signs(binary_pattern(q, w)),
                shape=torch.tensor(tuple(w.shape), dtype=torch.int64),
                scale=q.scale(w).detach().clone().cpu())
    fp = {k: v.detach().cpu() for k, v in state.items() if k not in binary}
    return dict(format=FORMAT, version=VERSION, binary=binary, fp=fp,
                config=config)


def save_packed(model: nn.Module, path: str,
                config: Optional[str] = None) -> dict:
    """Write the packed export of ``model`` to ``path``; return it."""
    packed = pack_model(model, config)
    dirname = os.path.dirname(os.path.abspath(path))
    os.makedirs(dirname, exist_ok=True)
    torch.save(packed, path)
    return packed


def read_packed(path_or_packed: Union[str, dict]) -> dict:
    """Read a packed file (or pass a packed dict through), checking format."""
    packed = path_or_packed
    if isinstance(path_or_packed, (str, os.PathLike)):
        packed = torch.load(path_or_packed, map_location='cpu',
                            weights_only=True)
    if not isinstance(packed, dict) or packed.get('format') != FORMAT:
        raise ValueError('not a packed mmseg_didb export (expected a dict '
                         f"with format='{FORMAT}'); write one with "
                         'tools/export_binary.py')
    if packed.get('version') != VERSION:
        raise ValueError(f'packed export version {packed.get("version")} is '
                         f'not supported (this loader reads {VERSION})')
    return packed


def load_packed(model: nn.Module, path_or_packed: Union[str, dict],
                strict: bool = True) -> nn.Module:
    """Restore a model (built from the same config) from a packed export.

    FP entries are loaded first (learnable scales and lazy-init flags
    included), then every packed weight is replaced by a latent weight that
    binarizes to the stored pattern and scale.

    Raises:
        KeyError: if a packed layer does not exist in ``model`` or is not a
            binary layer with an enabled weight quantizer there (a model built
            from another config or preset).
    """
    packed = read_packed(path_or_packed)
    layers = _binary_layers(model)
    by_key = {(f'{n}.weight' if n else 'weight'): m for n, m in layers.items()}
    missing = [k for k in packed['binary'] if k not in by_key]
    if missing:
        raise KeyError(f'packed binary weights {missing[:5]} have no binary '
                       'layer with an enabled weight quantizer in the model; '
                       'build the model from the config the export was made '
                       'with')
    state = dict(packed['fp'])
    current = model.state_dict()
    for key, entry in packed['binary'].items():
        state[key] = current[key]  # placeholder, replaced below
    model.load_state_dict(state, strict=strict)
    with torch.no_grad():
        for key, entry in packed['binary'].items():
            layer = by_key[key]
            shape = tuple(int(s) for s in entry['shape'])
            if tuple(layer.weight.shape) != shape:
                raise ValueError(f'{key}: packed shape {shape} != model '
                                 f'shape {tuple(layer.weight.shape)}')
            q = layer.weight_quantizer
            signs = unpack_signs(entry['bits'], shape).to(layer.weight.dtype)
            scale = entry['scale'].to(layer.weight.dtype)
            w = latent_from_binary(q, signs, scale)
            wrong = (q.latent(w) >= 0) != (signs > 0)
            if bool(wrong.any()):
                # a constant centred row (latent 0, all +1): a zero row keeps
                # the pattern; its scale then comes from the frozen value
                rows = wrong.reshape(shape[0], -1).any(1)
                w[rows] = 0
            exact = torch.equal(binarized(q, w), scale * signs)
            if not exact:
                q = FrozenScaleWeight(q, scale)
                layer.weight_quantizer = q
            if not torch.equal(binarized(q, w), scale * signs):
                raise RuntimeError(f'{key}: could not restore the binary '
                                   'weight exactly')
            layer.weight.copy_(w.to(layer.weight.device))
    return model


def build_from_packed(path: str, config=None) -> nn.Module:
    """Build the model from the export's stored config (or ``config``) and
    load the packed weights; returns the model in eval mode."""
    from mmengine.config import Config

    from .builder import build_segmentor
    packed = read_packed(path)
    if config is None:
        if not packed.get('config'):
            raise ValueError('the export stores no config; pass config=')
        config = Config.fromstring(packed['config'], file_format='.py')
    model = build_segmentor(config)
    load_packed(model, packed)
    return model.eval()


def file_size(obj: dict) -> int:
    """Bytes ``torch.save`` writes for ``obj``."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getbuffer().nbytes
