"""Config helpers: files shipped with an OpenMMLab package
(``'pkg::rel/path.py'``) and the check of a model's option dicts."""
import importlib.util
import os.path as osp
from typing import Any, Dict, Iterable, Optional

__all__ = ['package_config_path', 'option_dict']


def option_dict(name: str, value: Optional[Any], valid: Iterable[str],
                example: str) -> Dict[str, Any]:
    """A model's option dict (``binarize=``, ``distill=``), checked.

    Args:
        name: The argument's name (for the messages).
        value: None (no options) or a dict.
        valid: The accepted keys.
        example: A valid value, shown when ``value`` is not a dict.

    Returns:
        A plain dict copy of ``value`` (empty for None).

    Raises:
        TypeError: ``value`` is neither None nor a dict.
        ValueError: a key outside ``valid``.
    """
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f'{name} must be None or a dict such as {example}, '
                        f'got {value!r}.')
    valid = list(valid)
    unknown = sorted(set(value) - set(valid))
    if unknown:
        raise ValueError(f'Unknown {name} keys {unknown}; valid keys are '
                         f'{valid}.')
    return dict(value)


def package_config_path(path: str) -> str:
    """The file of a config path; ``'mmseg::swin/x.py'`` (or ``mmpretrain::``,
    ``mmdet::``) names the config shipped in that package's wheel
    (``<package>/.mim/configs/swin/x.py``). Other paths are returned as they
    are.

    Raises:
        ImportError: the package is not installed.
    """
    if '::' not in path:
        return path
    package, rel = path.split('::', 1)
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ImportError(f'{path!r} names a config of {package}, which is '
                          'not installed (bash tools/setup_env.sh)')
    return osp.join(osp.dirname(spec.origin), '.mim', 'configs', rel)
