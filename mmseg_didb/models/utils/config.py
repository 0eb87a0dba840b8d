"""Config files shipped with an OpenMMLab package (``'pkg::rel/path.py'``)."""
import importlib.util
import os.path as osp

__all__ = ['package_config_path']


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
