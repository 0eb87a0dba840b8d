"""ADE20K pieces used by the shipped ADE20K configs.

* :class:`ADE20KCheckedDataset`: mmseg's ``ADE20KDataset`` that fails at once,
  saying where to download ADE20K and where to unpack it, when the folder is
  missing or holds no images (mmseg itself fails later with an unrelated
  sampler or ``scandir`` error).
* :class:`CenterCropEval`: mmcv's ``CenterCrop`` that also makes the crop the
  evaluation frame, for the BiDense protocol (short side resized, then a centre
  crop on which the metrics are computed).
"""
import os
import os.path as osp
from typing import List

from mmcv.transforms import CenterCrop
from mmseg.datasets import ADE20KDataset
from mmseg.registry import DATASETS, TRANSFORMS

ADE20K_URL = ('http://data.csail.mit.edu/places/ADEchallenge/'
              'ADEChallengeData2016.zip')
ADE20K_HOME = 'http://sceneparsing.csail.mit.edu/'


def ade20k_missing_message(data_root: str, problem: str) -> str:
    """Builds the "ADE20K is missing" error text.

    Args:
        data_root: The dataset root the config points at.
        problem: What exactly is wrong (first sentence of the message).

    Returns:
        str: A message saying what is wrong, where to download ADE20K and where
        to unpack it.
    """
    parent = osp.dirname(osp.normpath(data_root)) or '.'
    return (
        f'{problem}\n'
        'ADE20K (SceneParsing, 150 classes) is not shipped. Download '
        f'ADEChallengeData2016.zip from the MIT Scene Parsing benchmark '
        f'({ADE20K_HOME}, direct link {ADE20K_URL}) and unzip it so that '
        f'"{data_root}/images/training" and '
        f'"{data_root}/annotations/training" exist (plus the "validation" '
        'folders), e.g. from the repository root:\n'
        f'    mkdir -p {parent} && '
        f'unzip ADEChallengeData2016.zip -d {parent}\n'
        f'(absolute path here: {osp.abspath(data_root)}). To keep the data '
        'elsewhere, link it there or pass --cfg-options '
        'train_dataloader.dataset.data_root=PATH '
        'val_dataloader.dataset.data_root=PATH '
        'test_dataloader.dataset.data_root=PATH.')


@DATASETS.register_module()
class ADE20KCheckedDataset(ADE20KDataset):
    """``ADE20KDataset`` that checks the data is there before listing it.

    Same arguments and behaviour as mmseg's ``ADE20KDataset``; only local
    folders are checked (with a remote ``backend_args`` the listing is left to
    mmseg).

    Raises:
        FileNotFoundError: When the image or annotation folder is missing or
            holds no ``.jpg`` image, with download and placement instructions.
    """

    def load_data_list(self) -> List[dict]:
        img_dir = self.data_prefix.get('img_path', '')
        ann_dir = self.data_prefix.get('seg_map_path', None)
        data_root = self.data_root or osp.dirname(osp.dirname(img_dir))
        local = self.backend_args is None and '://' not in str(img_dir)
        if local and not self.ann_file:
            for folder in (img_dir, ann_dir):
                if folder and not osp.isdir(folder):
                    raise FileNotFoundError(
                        ade20k_missing_message(
                            data_root, f'ADE20K folder "{folder}" not found.'))
        data_list = super().load_data_list()
        if local and not data_list:
            raise FileNotFoundError(
                ade20k_missing_message(
                    data_root, f'No "{self.img_suffix}" image found under '
                    f'"{img_dir}" (listing: {sorted(os.listdir(img_dir))[:5]}'
                    ').'))
        return data_list


@TRANSFORMS.register_module()
class CenterCropEval(CenterCrop):
    """mmcv ``CenterCrop`` whose crop becomes the evaluation frame.

    mmseg resizes predictions back to ``ori_shape`` before the metric; after a
    centre crop of image and label that shape must be the crop's, so this
    transform sets ``ori_shape`` to the cropped ``img_shape``. Used by the
    BiDense evaluation protocol (BiDense, arXiv 2411.10346: short side 480,
    then a 480 x 480 centre crop).
    """

    def transform(self, results: dict) -> dict:
        results = super().transform(results)
        results['ori_shape'] = results['img_shape']
        return results
