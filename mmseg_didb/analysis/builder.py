"""Config helpers shared by the efficiency tools: load a config, derive its FP
counterpart, build the segmentor for analysis.

The FP counterpart of a config is the same model with every ``preset`` key set
to ``'fp'`` (and every ``preset_overrides`` emptied), so binary and FP models
differ only in binarization and the binary-unit extras, never in widths,
depths or input size.
"""
import copy
import os.path as osp
from typing import Any, Callable, Optional, Union

import torch.nn as nn
from mmengine.config import Config, ConfigDict

#: mmseg's stock FP UPerNet config of each plugin backbone (``--vs mmseg``)
MMSEG_STOCK_CONFIGS = {
    'DIDBSwin': 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_'
                '8xb2-160k_ade20k-512x512.py',
    'DIDBViT': 'mmseg::vit/vit_deit-s16_upernet_8xb2-160k_ade20k-'
               '512x512.py',
}

#: Keys that only matter for training with a teacher; dropped for analysis.
_DISTILL_KEYS = ('teacher_config', 'teacher_checkpoint', 'distill',
                 'allow_random_teacher', 'teacher_allow_unsafe_load')


def load_config(config: Union[str, Config, dict],
                cfg_options: Optional[dict] = None) -> Config:
    """Load a config file (or copy a Config / dict).

    Args:
        config: config path, Config or dict.
        cfg_options: ``--cfg-options`` overrides merged into the result.

    Raises:
        FileNotFoundError: if ``config`` is a path that does not exist.
    """
    if isinstance(config, str):
        from ..models.utils.config import package_config_path
        config = package_config_path(config)
    if isinstance(config, Config):
        cfg = copy.deepcopy(config)
    elif isinstance(config, dict):
        cfg = Config(copy.deepcopy(config))
    elif not osp.isfile(config):
        raise FileNotFoundError(
            f'config file "{config}" does not exist; pass the path of an '
            'mmseg config, e.g. configs/didb_swin_t_ade20k.py')
    else:
        cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def comparison_config(cfg: Config, vs: str,
                      cfg_options: Optional[dict] = None) -> Optional[Config]:
    """The config an efficiency tool compares ``cfg`` with (``--vs``).

    ``'auto'``: :func:`fp_counterpart` of ``cfg``; ``'mmseg'``: mmseg's
    own stock FP config of the same architecture
    (:data:`MMSEG_STOCK_CONFIGS`, from its installed package); ``'none'``:
    None (no comparison); anything else: that config file (``'mmseg::...'``
    for one shipped with mmseg), with ``cfg_options``.
    """
    if vs == 'none':
        return None
    if vs == 'auto':
        return fp_counterpart(cfg)
    if vs == 'mmseg':
        backbone = cfg.model.backbone.type.split('.')[-1]
        if backbone not in MMSEG_STOCK_CONFIGS:
            raise ValueError(
                f'--vs mmseg knows the stock configs of '
                f'{sorted(MMSEG_STOCK_CONFIGS)}, not of {backbone}; pass '
                "the config to compare with ('mmseg::<dir>/<file>.py').")
        vs = MMSEG_STOCK_CONFIGS[backbone]
    return load_config(vs, cfg_options)


_RECURSE = object()


def _rewrite(node: Any, rule: Callable[[str, Any], Any]) -> Any:
    """Copy of ``node`` with ``rule(key, value)`` as the value of every dict
    item at any depth; where the rule returns ``_RECURSE`` the value is
    rewritten in turn."""
    if isinstance(node, dict):
        out = ConfigDict() if isinstance(node, ConfigDict) else type(node)()
        for key, value in node.items():
            new = rule(key, value)
            out[key] = _rewrite(value, rule) if new is _RECURSE else new
        return out
    if isinstance(node, (list, tuple)):
        return type(node)(_rewrite(v, rule) for v in node)
    return node


def _fp_rule(key: str, value: Any) -> Any:
    """Set ``preset='fp'`` and clear ``preset_overrides``."""
    if key == 'preset':
        return 'fp'
    if key == 'preset_overrides':
        return dict()
    return _RECURSE


def _has_key(node: Any, name: str) -> bool:
    """Whether ``name`` is a key of any dict nested in ``node``."""
    if isinstance(node, dict):
        return name in node or any(_has_key(v, name) for v in node.values())
    if isinstance(node, (list, tuple)):
        return any(_has_key(v, name) for v in node)
    return False


def fp_counterpart(config: Union[str, Config, dict]) -> Config:
    """Return the FP counterpart of a config.

    Every ``preset`` key anywhere under ``model`` becomes ``'fp'`` and every
    ``preset_overrides`` becomes an empty dict (overrides such as
    ``hfsc=True`` would otherwise re-enable binary-only extras on the FP
    model). Everything else (widths, depths, heads, input size) is unchanged.

    Raises:
        ValueError: if the config has no ``preset`` key at all, i.e. it is
            already an FP config of stock mmseg modules and has no binary
            counterpart to derive from (pass the FP config explicitly).
    """
    cfg = load_config(config)
    if not _has_key(cfg.get('model', {}), 'preset'):
        raise ValueError(
            'the config sets no "preset" anywhere under `model`, so its FP '
            'counterpart cannot be derived; pass the FP config explicitly '
            '(--vs CONFIG)')
    cfg.model = _rewrite(cfg.model, _fp_rule)
    return cfg


def strip_training_only(model_cfg: dict) -> dict:
    """Drop the distillation teacher from a segmentor config.

    ``DistillEncoderDecoder`` becomes ``BinaryEncoderDecoder`` (its parent):
    the teacher only runs at training time and loads a checkpoint, so it is
    not part of the model whose efficiency is measured.
    """
    model_cfg = copy.deepcopy(model_cfg)
    if model_cfg.get('type') == 'DistillEncoderDecoder':
        model_cfg['type'] = 'BinaryEncoderDecoder'
        for key in _DISTILL_KEYS:
            model_cfg.pop(key, None)
    return model_cfg


def _no_pretrained_rule(key: str, value: Any) -> Any:
    """Remove ``init_cfg`` of type Pretrained (no checkpoint is loaded)."""
    if (key == 'init_cfg' and isinstance(value, dict)
            and value.get('type') == 'Pretrained'):
        return None
    if key == 'pretrained' and isinstance(value, str):
        return None
    return _RECURSE


def build_segmentor(config: Union[str, Config, dict],
                    keep_pretrained: bool = False,
                    device: Optional[str] = None) -> nn.Module:
    """Build the model of a config for analysis (no weights are loaded).

    SyncBN is reverted to BN (single process), the distillation teacher is
    dropped (:func:`strip_training_only`) and, unless ``keep_pretrained``,
    ``Pretrained`` init configs are removed so that no checkpoint is needed.
    Weights are the constructors' initialisation; ``init_weights`` is not
    called.

    Args:
        config: config path, Config or dict with a ``model`` key.
        keep_pretrained: keep ``init_cfg`` pretrained entries.
        device: move the model there (default: stay on CPU).
    """
    import mmseg_didb  # noqa: F401  (registers the plugin modules)
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    cfg = load_config(config)
    if 'model' not in cfg:
        raise KeyError('the config has no `model` entry to build')
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    model_cfg = strip_training_only(cfg.model)
    if not keep_pretrained:
        model_cfg = _rewrite(model_cfg, _no_pretrained_rule)
    model = MODELS.build(model_cfg)
    model = revert_sync_batchnorm(model)
    if device is not None:
        model = model.to(device)
    return model
