"""A tiny folder with ADE20K's layout, for tests and smoke runs.

Writes ``<root>/data/ade/ADEChallengeData2016/{images,annotations}/
{training,validation}`` with a few small ``ADE_*_%08d.jpg`` images and ``.png``
label maps (uint8, 0 = "other" which ``reduce_zero_label`` ignores, 1..150 the
classes). Each image is a few flat colour regions plus noise and its label map
marks the same regions, so a model can actually fit it.

Usage from the command line (e.g. for a quick ``tools/train.py`` run)::

    python tests/ade_fixture.py .   # writes ./data/ade/ADEChallengeData2016
"""
import argparse
import os.path as osp
from pathlib import Path
from typing import Tuple

import numpy as np
from PIL import Image

ADE_SUBDIR = osp.join('data', 'ade', 'ADEChallengeData2016')


def _sample(rng: np.random.Generator, size: Tuple[int, int],
            num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    """One image / label pair: vertical bands of random classes plus a box."""
    h, w = size
    label = np.zeros((h, w), np.uint8)
    cuts = np.sort(rng.choice(np.arange(1, w), size=2, replace=False))
    for band, (x0, x1) in enumerate(zip([0, *cuts], [*cuts, w])):
        # band 0 sometimes stays "other" (0) so ignore handling is exercised
        label[:, x0:x1] = 0 if band == 0 and rng.random() < .5 else \
            rng.integers(1, num_classes + 1)
    y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
    label[y0:y0 + h // 3, x0:x0 + w // 3] = rng.integers(1, num_classes + 1)
    palette = rng.integers(0, 256, size=(num_classes + 1, 3))
    image = palette[label] + rng.normal(0, 8, size=(h, w, 3))
    return np.clip(image, 0, 255).astype(np.uint8), label


def make_ade_folder(root: str | Path,
                    num_train: int = 4,
                    num_val: int = 2,
                    size: Tuple[int, int] = (64, 96),
                    num_classes: int = 150,
                    seed: int = 0) -> Path:
    """Writes the tiny ADE20K-layout folder.

    Args:
        root: Folder that receives ``data/ade/ADEChallengeData2016``.
        num_train: Number of training pairs.
        num_val: Number of validation pairs.
        size: (height, width) of every image.
        num_classes: Label values are drawn from 1..num_classes (0 = other).
        seed: Random seed; the same arguments give the same files.

    Returns:
        Path: The dataset root (``<root>/data/ade/ADEChallengeData2016``).
    """
    rng = np.random.default_rng(seed)
    data_root = Path(root) / ADE_SUBDIR
    for split, count in (('training', num_train), ('validation', num_val)):
        img_dir = data_root / 'images' / split
        ann_dir = data_root / 'annotations' / split
        img_dir.mkdir(parents=True, exist_ok=True)
        ann_dir.mkdir(parents=True, exist_ok=True)
        prefix = 'train' if split == 'training' else 'val'
        for i in range(1, count + 1):
            image, label = _sample(rng, size, num_classes)
            name = f'ADE_{prefix}_{i:08d}'
            Image.fromarray(image).save(img_dir / f'{name}.jpg', quality=95)
            Image.fromarray(label).save(ann_dir / f'{name}.png')
    return data_root


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('root', help='folder that receives ' + ADE_SUBDIR)
    parser.add_argument('--num-train', type=int, default=4)
    parser.add_argument('--num-val', type=int, default=2)
    parser.add_argument(
        '--size', type=int, nargs=2, default=(64, 96), metavar=('H', 'W'))
    args = parser.parse_args()
    print(make_ade_folder(args.root, args.num_train, args.num_val,
                          tuple(args.size)))
