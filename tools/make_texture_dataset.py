"""Build the real-photo texture-mosaic segmentation dataset.

Example:
    python tools/make_texture_dataset.py data/texture_mosaic
    python tools/make_texture_dataset.py data/tm_small --num-train 40 \\
        --num-val 10 --seed 3
    python tools/make_texture_dataset.py data/texture_mosaic --coco

``--coco`` also writes COCO-format detection annotations (every region of a
class an instance) for mmdet: ``annotations/instances_<split>.json``.
"""
import argparse
import os.path as osp
import sys
import time

# Runs from a checkout without installing the package.
sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmseg_didb.datasets.texture_coco import (  # noqa: E402
    write_coco_annotations)
from mmseg_didb.datasets.texture_maker import (  # noqa: E402
    CLASS_SETS, MosaicSpec, build_dataset, class_names, is_built)


def parse_args() -> argparse.Namespace:
    defaults = MosaicSpec()
    parser = argparse.ArgumentParser(
        description='Build the texture-mosaic dataset (ADE20K layout: '
        'images/{training,validation}, annotations/{training,validation}; '
        'labels 0 = other/ignore, 1..K = classes) from photographs shipped '
        'in scikit-image.')
    parser.add_argument('out_dir', help='output folder')
    parser.add_argument('--seed', type=int, default=defaults.seed)
    parser.add_argument(
        '--size', type=int, default=defaults.size, help='image side (px)')
    parser.add_argument('--num-train', type=int, default=defaults.num_train)
    parser.add_argument('--num-val', type=int, default=defaults.num_val)
    parser.add_argument(
        '--train-fraction',
        type=float,
        default=defaults.train_fraction,
        help='fraction of each photo (left part, by width) that feeds the '
        'training split; the rest feeds validation')
    parser.add_argument(
        '--other-prob',
        type=float,
        default=defaults.other_prob,
        help='probability that a region comes from an "other" photo '
        '(label 0)')
    parser.add_argument('--min-cells', type=int, default=defaults.min_cells)
    parser.add_argument('--max-cells', type=int, default=defaults.max_cells)
    parser.add_argument(
        '--classes',
        default=defaults.classes,
        choices=sorted(CLASS_SETS),
        help='class set: texture8 (8 photographs) or grain16 (each also at '
        'half its grain size)')
    parser.add_argument(
        '--gray',
        action='store_true',
        help='grayscale photographs: the classes differ by texture only')
    parser.add_argument(
        '--coco',
        action='store_true',
        help='also write COCO detection annotations (mmdet): '
        'annotations/instances_{training,validation}.json')
    parser.add_argument(
        '--force',
        action='store_true',
        help='rebuild even if an identical build is present')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    spec = MosaicSpec(
        seed=args.seed,
        size=args.size,
        num_train=args.num_train,
        num_val=args.num_val,
        train_fraction=args.train_fraction,
        other_prob=args.other_prob,
        min_cells=args.min_cells,
        max_cells=args.max_cells,
        gray=args.gray,
        classes=args.classes)
    if not args.force and is_built(args.out_dir, spec):
        print(f'{args.out_dir}: already built with these settings '
              '(use --force to rebuild).')
    else:
        start = time.time()
        build_dataset(args.out_dir, spec)
        names = class_names(args.classes)
        print(f'{len(names)} classes: {", ".join(names)} (labels 1..'
              f'{len(names)}, 0 = other/ignore); built in '
              f'{time.time() - start:.1f} s.')
    if args.coco:
        for path in write_coco_annotations(args.out_dir):
            print(f'COCO annotations -> {path}')


if __name__ == '__main__':
    main()
