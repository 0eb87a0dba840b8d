"""The texture-mosaic dataset (built by ``tools/make_texture_dataset.py``)."""
import os.path as osp
from typing import List

from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

from .texture_maker import CLASSES, PALETTE


@DATASETS.register_module()
class TextureMosaicDataset(BaseSegDataset):
    """Real-photo texture mosaics in ADE20K's conventions.

    Images are ``images/{training,validation}/*.png``, labels
    ``annotations/{training,validation}/*.png`` with 0 = other/ignore and
    1..8 = the classes below; ``reduce_zero_label=True`` (fixed, as in
    ``ADE20KDataset``) maps them to 255 and 0..7.

    Args:
        **kwargs: Arguments of ``mmseg.datasets.BaseSegDataset``.
    """
    METAINFO = dict(classes=CLASSES, palette=PALETTE)

    def __init__(self,
                 img_suffix: str = '.png',
                 seg_map_suffix: str = '.png',
                 reduce_zero_label: bool = True,
                 **kwargs) -> None:
        if not reduce_zero_label:
            raise ValueError(
                'TextureMosaicDataset labels 0 as "other" (ignored), like '
                'ADE20K: keep reduce_zero_label=True.')
        super().__init__(
            img_suffix=img_suffix,
            seg_map_suffix=seg_map_suffix,
            reduce_zero_label=reduce_zero_label,
            **kwargs)

    def load_data_list(self) -> List[dict]:
        """Scans the image folder; a missing folder is an error saying how to
        build the dataset (mmseg would fail later with an unrelated error)."""
        img_dir = self.data_prefix.get('img_path', '')
        if not osp.isdir(img_dir):
            root = osp.dirname(osp.dirname(osp.normpath(img_dir))) or '.'
            raise FileNotFoundError(
                f'Texture-mosaic images not found at "{img_dir}". Build the '
                f'dataset with: python tools/make_texture_dataset.py {root}')
        data_list = super().load_data_list()
        if not data_list:
            raise FileNotFoundError(
                f'No "*{self.img_suffix}" images in "{img_dir}". Rebuild the '
                'dataset with tools/make_texture_dataset.py.')
        return data_list
