"""Build a small ImageNet-format classification folder from skimage photos.

Every class is one photograph shipped with scikit-image (textures by default);
samples are random crops of it, rescaled to a fixed size. The left part of each
photo feeds ``train/``, the right part ``val/``, so no validation pixel is seen
in training::

    OUT/train/<class>/<class>_00000.png
    OUT/val/<class>/<class>_00000.png

Example::

    python tools/make_cls_folder.py data/texture_cls --size 64 \
        --train-per-class 32 --val-per-class 8
"""
import argparse
import os
import os.path as osp
from typing import Dict, List

import numpy as np
from PIL import Image

DEFAULT_CLASSES = ('brick', 'grass', 'gravel', 'moon', 'coins', 'coffee',
                   'immunohistochemistry', 'hubble_deep_field')


def load_photo(name: str) -> np.ndarray:
    """A scikit-image photo as (H, W, 3) uint8 RGB."""
    import skimage.data
    loader = getattr(skimage.data, name, None)
    if loader is None or not callable(loader):
        raise ValueError(f'skimage.data has no photo {name!r}; valid '
                         f'defaults are {list(DEFAULT_CLASSES)}.')
    img = np.asarray(loader())
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3]).astype(np.uint8)


def random_crops(img: np.ndarray, num: int, size: int,
                 rng: np.random.Generator) -> List[np.ndarray]:
    """``num`` random square crops (side in [size, 2*size]) resized to size."""
    h, w = img.shape[:2]
    max_side = min(h, w, 2 * size)
    if max_side < size:
        raise ValueError(f'Region of {h}x{w} px is smaller than --size '
                         f'{size}; lower --size or --val-fraction.')
    crops = []
    for _ in range(num):
        side = int(rng.integers(size, max_side + 1))
        y = int(rng.integers(0, h - side + 1))
        x = int(rng.integers(0, w - side + 1))
        patch = Image.fromarray(img[y:y + side, x:x + side])
        if rng.random() < 0.5:
            patch = patch.transpose(Image.FLIP_LEFT_RIGHT)
        crops.append(np.asarray(patch.resize((size, size), Image.BILINEAR)))
    return crops


def make_folder(out: str,
                classes=DEFAULT_CLASSES,
                size: int = 64,
                train_per_class: int = 32,
                val_per_class: int = 8,
                val_fraction: float = 0.25,
                seed: int = 0) -> Dict[str, int]:
    """Write the folder and return the number of images per split."""
    if not 0 < val_fraction < 1:
        raise ValueError('val_fraction must be in (0, 1).')
    rng = np.random.default_rng(seed)
    counts = {'train': 0, 'val': 0}
    for name in classes:
        img = load_photo(name)
        split_x = int(round(img.shape[1] * (1 - val_fraction)))
        regions = {'train': img[:, :split_x], 'val': img[:, split_x:]}
        for split, num in (('train', train_per_class), ('val', val_per_class)):
            folder = osp.join(out, split, name)
            os.makedirs(folder, exist_ok=True)
            for i, crop in enumerate(
                    random_crops(regions[split], num, size, rng)):
                Image.fromarray(crop).save(
                    osp.join(folder, f'{name}_{i:05d}.png'))
            counts[split] += num
    return counts


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('out', help='output folder')
    parser.add_argument('--size', type=int, default=64, help='image side')
    parser.add_argument('--train-per-class', type=int, default=32)
    parser.add_argument('--val-per-class', type=int, default=8)
    parser.add_argument(
        '--val-fraction', type=float, default=0.25,
        help='right-hand fraction of each photo reserved for val')
    parser.add_argument(
        '--classes', default=','.join(DEFAULT_CLASSES),
        help='comma-separated skimage.data photo names, one class each')
    parser.add_argument('--seed', type=int, default=0)
    return parser.parse_args()


def main():
    args = parse_args()
    classes = [c for c in args.classes.split(',') if c]
    counts = make_folder(args.out, classes, args.size, args.train_per_class,
                         args.val_per_class, args.val_fraction, args.seed)
    print(f'{len(classes)} classes, {counts["train"]} train / '
          f'{counts["val"]} val images of {args.size}x{args.size} px '
          f'written to {args.out}')


if __name__ == '__main__':
    main()
