"""mmseg_didb: fully binary vision transformers for MMSegmentation 1.x.

Importing the package applies the compatibility fixes in :mod:`mmseg_didb.compat`
and registers every module of the plugin into mmseg's registries.
"""
from . import compat

compat.apply()

from . import binary, datasets, engine, models  # noqa: E402,F401
from . import timm_models  # noqa: E402,F401  (timm registry entries)

__version__ = '0.1.0'
