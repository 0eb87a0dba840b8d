"""COCO detection annotations of a texture-mosaic build: every region of a
class is an instance boxed by the region's bounding box (the tiny detection
task of the mmdet configs)."""
import json
import os.path as osp
from typing import List

from .texture_maker import SPLITS, is_built, read_meta

__all__ = ['coco_annotations', 'write_coco_annotations']


def coco_annotations(meta: dict, split: str, min_side: int = 4) -> dict:
    """COCO-format instances of one split of a build: every region of a
    class (label 1..K) is an instance, its box the region's bounding box.

    Args:
        meta: The meta record of the build (:func:`read_meta`).
        split: ``'training'`` or ``'validation'``.
        min_side: Regions whose box is narrower or lower than this (px) are
            left out (slivers cut by the image border).

    Returns:
        dict: ``images`` (file names relative to ``images/<split>/``),
        ``annotations`` (``bbox`` as ``[x, y, w, h]``, ``area`` the box
        area, ``category_id`` = label 1..K) and ``categories``.
    """
    if split not in SPLITS:
        raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
    size = int(meta['spec']['size'])
    images, annotations = [], []
    for image_id, rec in enumerate(meta['images'][split]):
        images.append(dict(id=image_id, file_name=osp.basename(rec['img']),
                           width=size, height=size))
        for cell in rec['cells']:
            if cell['label'] == 0:
                continue
            y0, x0, y1, x1 = cell['bbox']
            w, h = x1 - x0, y1 - y0
            if min(w, h) < min_side:
                continue
            annotations.append(dict(
                id=len(annotations) + 1, image_id=image_id,
                category_id=int(cell['label']),
                bbox=[float(x0), float(y0), float(w), float(h)],
                area=float(w * h), iscrowd=0))
    categories = [dict(id=k + 1, name=name)
                  for k, name in enumerate(meta['classes'])]
    return dict(images=images, annotations=annotations,
                categories=categories)


def write_coco_annotations(out_dir: str, min_side: int = 4) -> List[str]:
    """Write ``annotations/instances_<split>.json`` (COCO detection format,
    see :func:`coco_annotations`) for both splits of the build in
    ``out_dir``; returns the paths.

    Raises:
        FileNotFoundError: ``out_dir`` holds no complete build.
    """
    meta = read_meta(out_dir)
    if meta is None or not is_built(out_dir):
        raise FileNotFoundError(
            f'{out_dir} holds no complete texture-mosaic build; build it '
            'first (python tools/make_texture_dataset.py OUT_DIR --coco).')
    paths = []
    for split in SPLITS:
        path = osp.join(out_dir, 'annotations', f'instances_{split}.json')
        with open(path, 'w') as f:
            json.dump(coco_annotations(meta, split, min_side), f)
        paths.append(path)
    return paths
