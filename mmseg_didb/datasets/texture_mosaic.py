"""The texture-mosaic dataset (built by ``tools/make_texture_dataset.py``)."""
import json
import os.path as osp
from typing import List, Optional

from mmseg.datasets import BaseSegDataset
from mmseg.registry import DATASETS

from .texture_maker import CLASS_SETS, CLASSES, META_FILE, PALETTE, class_names


@DATASETS.register_module()
class TextureMosaicDataset(BaseSegDataset):
    """Real-photo texture mosaics in ADE20K's conventions.

    Images are ``images/{training,validation}/*.png``, labels
    ``annotations/{training,validation}/*.png`` with 0 = other/ignore and
    1..K = the classes; ``reduce_zero_label=True`` (fixed, as in
    ``ADE20KDataset``) maps them to 255 and 0..K-1. The classes are those of
    the build (its ``texture_mosaic.json``: the default 8 below, or another
    class set of the maker); an explicit ``metainfo`` wins.

    Args:
        **kwargs: Arguments of ``mmseg.datasets.BaseSegDataset``.
    """
    METAINFO = dict(classes=CLASSES, palette=PALETTE)

    def __init__(self,
                 img_suffix: str = '.png',
                 seg_map_suffix: str = '.png',
                 reduce_zero_label: bool = True,
                 metainfo: Optional[dict] = None,
                 **kwargs) -> None:
        if not reduce_zero_label:
            raise ValueError(
                'TextureMosaicDataset labels 0 as "other" (ignored), like '
                'ADE20K: keep reduce_zero_label=True.')
        if metainfo is None:
            metainfo = self._build_metainfo(kwargs.get('data_root', ''))
        super().__init__(
            img_suffix=img_suffix,
            seg_map_suffix=seg_map_suffix,
            reduce_zero_label=reduce_zero_label,
            metainfo=metainfo,
            **kwargs)

    @classmethod
    def get_label_map(cls, new_classes=None):
        """The whole class list of another class set of the maker keeps its
        labels (mmseg would only accept subsets of the default classes)."""
        if new_classes is not None and any(
                tuple(new_classes) == class_names(name)
                for name in CLASS_SETS):
            return None
        return super().get_label_map(new_classes)

    @staticmethod
    def _build_metainfo(data_root: str) -> Optional[dict]:
        """Classes and palette recorded by the build, if it has a record."""
        path = osp.join(data_root or '', META_FILE)
        if not osp.isfile(path):
            return None
        with open(path) as f:
            meta = json.load(f)
        if 'classes' not in meta:
            return None
        return dict(classes=tuple(meta['classes']),
                    palette=meta.get('palette'))

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
