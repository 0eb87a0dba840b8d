"""Datasets of the plugin (registered in ``mmseg.registry.DATASETS``)."""
from .ade_checked import ADE20KCheckedDataset, CenterCropEval  # noqa: F401
from .texture_mosaic import TextureMosaicDataset  # noqa: F401

__all__ = ['ADE20KCheckedDataset', 'CenterCropEval', 'TextureMosaicDataset']
