"""The preset table: the single place that says what each baseline and each
DIDB switch means (like mmpretrain's ``arch_zoo``).

A model takes ``preset='didb'`` (or another name) plus optional overrides, e.g.
``resolve_preset('didb', hfsc=False)``, so every ablation is one config line.

========= ====== ======= ======= ==== ====== ==== ==== ==== ====== ===
preset    weight act     attn    unit activ. norm hfsc diba token  grs
========= ====== ======= ======= ==== ====== ==== ==== ==== ====== ===
fp        fp     fp      fp      no   rprelu ln   off  no   off    no
bnn       sign   ste     elastic yes  prelu  ln   off  no   off    no
react     react  rsign   elastic yes  rprelu ln   off  no   off    no
bit       bwn    elastic elastic yes  rprelu ln   off  no   off    no
binaryvit react  asm     elastic yes  rprelu ln   off  no   off    yes
didb      react  rsign   elastic yes  rprelu ln   full yes  static no
========= ====== ======= ======= ==== ====== ==== ==== ==== ====== ===

(diba: both ``diba_shortcut`` and ``diba_local``; ``hfsc_low`` is 'mean' in
every row; ``grs`` adds the GRS-like loss in
:class:`~mmseg_didb.models.BinaryEncoderDecoder`.)

Sources: BNN (Hubara et al. 2016), ReActNet (Liu et al. ECCV 2020) with the
BinaryViT-Le (CVPRW 2023) block, BiT (Liu et al. NeurIPS 2022), BinaryViT-Xiao
(TCSVT 2024; ASM and GRS are reconstructions), DIDB-ViT (Gao et al. 2025).
All binary presets keep the same block topology (binary units with FP
shortcuts), so rows differ only in the binarizers and the DIDB switches.
"""
import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Union

from torch import nn

from .quantizers import (build_act_quantizer, build_attn_quantizer,
                         build_weight_quantizer)
from .rprelu import ChannelPReLU, GridLike, RPReLU, TokenRPReLU

__all__ = ['BinaryPreset', 'PRESETS', 'PRESET_CHOICES', 'resolve_preset']

#: valid values of every string field (booleans are checked separately)
PRESET_CHOICES: Dict[str, tuple] = {
    'weight': ('fp', 'sign', 'react', 'bwn', 'pws'),
    'act': ('fp', 'ste', 'approx', 'rsign', 'elastic', 'asm'),
    'attn': ('fp', 'elastic', 'sab'),
    'activation': ('prelu', 'rprelu'),
    'norm': ('ln', 'bn'),
    'hfsc': ('off', 'full', 'split'),
    'hfsc_low': ('mean', 'll'),
    'token_rprelu': ('off', 'static', 'dynamic'),
}
_BOOL_FIELDS = ('unit', 'diba_shortcut', 'diba_local', 'grs')
# boolean shorthands accepted by resolve_preset for string switches
_BOOL_ALIASES: Dict[str, Dict[bool, str]] = {
    'hfsc': {True: 'full', False: 'off'},
    'token_rprelu': {True: 'static', False: 'off'},
    'weight': {False: 'fp'},
    'act': {False: 'fp'},
    'attn': {False: 'fp'},
}


@dataclass(frozen=True)
class BinaryPreset:
    """What a binary model binarizes and which DIDB components it uses.

    Attributes:
        name: preset name (the base row of :data:`PRESETS`).
        weight: weight binarizer: 'fp' | 'sign' | 'react' | 'bwn' | 'pws'.
        act: activation binarizer: 'fp' | 'ste' | 'approx' | 'rsign' |
            'elastic' | 'asm'.
        attn: attention-probability binarizer: 'fp' | 'elastic' | 'sab'.
        unit: every linear is a binary unit (norm + FP shortcut + activation);
            False gives the plain FP topology (timm's).
        activation: unit activation: 'prelu' | 'rprelu'.
        norm: norm inside units: 'ln' (LayerNorm) | 'bn' (BatchNorm over
            tokens).
        hfsc: high-fidelity similarity: 'off' | 'full' | 'split' (DIDB-ViT).
        hfsc_low: HFSC low band: 'mean' (the local 2x2 mean, so the high
            band ``X - X_L`` is a zero-mean detail) or 'll' (the orthonormal
            Haar LL, twice the local mean: the earlier reconstruction, kept
            for comparison); see :func:`mmseg_didb.binary.haar_split`.
        diba_shortcut: DIBA ``(l_s - k_i) v_i`` term (DIDB-ViT).
        diba_local: DIBA ``l_l * sum_{N8}(v_j - v_i)`` term (DIDB-ViT).
        token_rprelu: per-token RPReLU terms: 'off' | 'static' | 'dynamic'.
        grs: add the GRS-like weight regulariser to the loss (read by
            :class:`~mmseg_didb.models.BinaryEncoderDecoder`).
    """
    name: str
    weight: str
    act: str
    attn: str
    unit: bool
    activation: str
    norm: str
    hfsc: str
    hfsc_low: str
    diba_shortcut: bool
    diba_local: bool
    token_rprelu: str
    grs: bool

    def __post_init__(self) -> None:
        for key, choices in PRESET_CHOICES.items():
            value = getattr(self, key)
            if value not in choices:
                raise ValueError(f'BinaryPreset {self.name!r}: {key}='
                                 f'{value!r} is not one of {list(choices)}')
        for key in _BOOL_FIELDS:
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f'BinaryPreset {self.name!r}: {key} must be '
                                 f'a bool, got {getattr(self, key)!r}')

    @property
    def is_binary(self) -> bool:
        """True if anything (weights, activations, attention) is binarized."""
        return (self.weight, self.act, self.attn) != ('fp', 'fp', 'fp')

    def weight_quantizer(self,
                         out_channels: Optional[int] = None
                         ) -> Optional[nn.Module]:
        """A new weight quantizer (None for 'fp').

        ``out_channels`` is only needed by 'pws' outside the binary layers.
        """
        return build_weight_quantizer(self.weight, out_channels)

    def act_quantizer(self, num_channels: int, channel_dim: int = -1,
                      input_scale: bool = False) -> Optional[nn.Module]:
        """A new activation quantizer for ``num_channels`` (None for 'fp').

        ``input_scale``: divide the input by a running magnitude first
        (:class:`~mmseg_didb.binary.quantizers.RunningMagnitude`), for
        inputs that are not normalised.
        """
        return build_act_quantizer(self.act, num_channels, channel_dim,
                                   input_scale)

    def attn_quantizer(self, num_keys: Optional[int] = None,
                       level_init: Optional[float] = None
                       ) -> Optional[nn.Module]:
        """A new attention-probability quantizer (None for 'fp').

        ``num_keys`` (keys per query at the reference size) fixes the start
        of a ``{0, a}`` level, ``level_init`` overrides it (see
        :func:`~mmseg_didb.binary.quantizers.prob_level_init`).
        """
        return build_attn_quantizer(self.attn, num_keys, level_init)

    def unit_activation(self, num_channels: int,
                        grid: Optional[GridLike] = None,
                        channel_dim: int = -1) -> nn.Module:
        """The activation that closes a binary unit.

        'prelu' gives :class:`ChannelPReLU`; 'rprelu' gives :class:`RPReLU`,
        or :class:`TokenRPReLU` when ``token_rprelu`` is on and the caller
        works on tokens (``channel_dim=-1``): static mode needs the
        reference :class:`TokenGrid` ``grid``, dynamic mode none. Conv maps
        (``channel_dim=1``) have no tokens and get plain RPReLU.

        Raises:
            ValueError: static Token RPReLU on tokens without ``grid``.
        """
        if self.activation == 'prelu':
            return ChannelPReLU(num_channels, channel_dim)
        on_tokens = channel_dim in (-1, 2)
        if self.token_rprelu == 'off' or not on_tokens:
            return RPReLU(num_channels, channel_dim)
        if self.token_rprelu == 'static' and grid is None:
            raise ValueError(
                f'preset {self.name!r} uses static Token RPReLU: pass '
                'grid=TokenGrid((H, W), num_extra), the token grid the model '
                "is pretrained at, or set token_rprelu='dynamic' / False")
        return TokenRPReLU(num_channels, grid, self.token_rprelu)

    def replace(self, **overrides: Any) -> 'BinaryPreset':
        """A copy with ``overrides`` applied (see :func:`resolve_preset`)."""
        return resolve_preset(self, **overrides)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def _row(name, weight, act, attn, unit, activation, norm, hfsc, diba_s, diba_l,
         token, grs) -> BinaryPreset:
    return BinaryPreset(name, weight, act, attn, unit, activation, norm, hfsc,
                        'mean', diba_s, diba_l, token, grs)


#: THE preset table (see the module docstring for what each row means).
PRESETS: Dict[str, BinaryPreset] = {
    p.name: p
    for p in (
        #     name        weight   act        attn       unit   activ.
        #     norm  hfsc    diba_s diba_l token     grs
        _row('fp', 'fp', 'fp', 'fp', False, 'rprelu',
             'ln', 'off', False, False, 'off', False),
        _row('bnn', 'sign', 'ste', 'elastic', True, 'prelu',
             'ln', 'off', False, False, 'off', False),
        _row('react', 'react', 'rsign', 'elastic', True, 'rprelu',
             'ln', 'off', False, False, 'off', False),
        _row('bit', 'bwn', 'elastic', 'elastic', True, 'rprelu',
             'ln', 'off', False, False, 'off', False),
        _row('binaryvit', 'react', 'asm', 'elastic', True, 'rprelu',
             'ln', 'off', False, False, 'off', True),
        _row('didb', 'react', 'rsign', 'elastic', True, 'rprelu',
             'ln', 'full', True, True, 'static', False),
    )
}

_FIELDS = tuple(f.name for f in dataclasses.fields(BinaryPreset))


def _normalise(key: str, value: Any) -> Any:
    if isinstance(value, bool) and key in _BOOL_ALIASES:
        if value not in _BOOL_ALIASES[key]:
            raise ValueError(f'{key}={value!r} is ambiguous; use one of '
                             f'{list(PRESET_CHOICES[key])}')
        return _BOOL_ALIASES[key][value]
    return value


def resolve_preset(preset: Union[str, BinaryPreset, Mapping[str, Any]],
                   **overrides: Any) -> BinaryPreset:
    """Turn a preset name, a :class:`BinaryPreset` or a dict into a preset.

    Args:
        preset: a name of :data:`PRESETS`, a :class:`BinaryPreset`, or a dict
            ``dict(name=<base name>, **overrides)`` (a dict with every field
            builds a new preset directly).
        **overrides: field values replacing the base ones. Booleans are
            accepted for switches: ``hfsc=True`` -> 'full', ``hfsc=False`` ->
            'off', ``token_rprelu=True`` -> 'static', ``False`` -> 'off';
            ``weight/act/attn=False`` -> 'fp'. ``None`` values are ignored.

    Returns:
        The resolved (validated, frozen) preset; the name stays the base name.

    Raises:
        ValueError: unknown preset name, unknown override key or invalid
            value; the message lists the valid ones.
    """
    if isinstance(preset, BinaryPreset):
        base = preset
    elif isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f'unknown binary preset {preset!r}; valid '
                             f'presets: {sorted(PRESETS)}')
        base = PRESETS[preset]
    elif isinstance(preset, Mapping):
        spec = dict(preset)
        unknown = sorted(set(spec) - set(_FIELDS))
        if unknown:
            raise ValueError(f'unknown preset keys {unknown}; valid keys: '
                             f'{list(_FIELDS)}')
        if set(spec) == set(_FIELDS):
            spec = {k: _normalise(k, v) for k, v in spec.items()}
            base = BinaryPreset(**spec)
        else:
            name = spec.pop('name', None)
            if name is None:
                raise ValueError('a preset dict needs name=<one of '
                                 f'{sorted(PRESETS)}> or every field of '
                                 f'BinaryPreset {list(_FIELDS)}')
            base = resolve_preset(name, **spec)
    else:
        raise TypeError('preset must be a name, a BinaryPreset or a dict, got '
                        f'{type(preset).__name__}')
    overrides = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(overrides) - set(_FIELDS))
    if unknown:
        raise ValueError(f'unknown preset override keys {unknown}; valid keys:'
                         f' {list(_FIELDS)}')
    if not overrides:
        return base
    overrides = {k: _normalise(k, v) for k, v in overrides.items()}
    return dataclasses.replace(base, **overrides)


def expect_preset(preset: Any, owner: str) -> BinaryPreset:
    """``preset`` if it is a resolved :class:`BinaryPreset`, for the inner
    modules of a model: the model resolves its preset once, at its boundary,
    and passes the object down.

    Raises:
        TypeError: for a name, a dict or anything else; the message names
            :func:`resolve_preset`.
    """
    if not isinstance(preset, BinaryPreset):
        raise TypeError(
            f'{owner} takes a resolved BinaryPreset (the model resolves its '
            f'preset once and passes it down), got {preset!r}; pass '
            f'resolve_preset({preset!r})')
    return preset

