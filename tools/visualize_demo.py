"""Write a picture of predictions: image | ground truth | prediction.

Example:
    python tools/visualize_demo.py configs/demo_texture.py \\
        work_dirs/demo_texture/iter_400.pth \\
        --out work_dirs/demo_texture/demo_predictions.png
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
import mmseg_didb  # noqa: E402,F401

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from mmengine.config import Config, DictAction  # noqa: E402

from mmseg.apis import inference_model, init_model  # noqa: E402
from mmseg.registry import DATASETS  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Draw image | ground truth | prediction rows for the '
        'first images of the test split of a config.')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out', required=True, help='output PNG path')
    parser.add_argument(
        '--num', type=int, default=6, help='number of images (rows)')
    parser.add_argument(
        '--scale', type=int, default=2, help='upscale factor of each panel')
    parser.add_argument('--device', default='cpu')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override settings of the config, as in tools/test.py')
    return parser.parse_args()


def colorize(label: np.ndarray, palette: np.ndarray,
             ignore_index: int = 255) -> np.ndarray:
    """Class-index map -> RGB (ignored pixels black)."""
    out = np.zeros(label.shape + (3, ), np.uint8)
    valid = (label != ignore_index) & (label < len(palette))
    out[valid] = palette[label[valid]]
    return out


def caption(panel: np.ndarray, text: str) -> np.ndarray:
    bar = np.full((18, panel.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, text, (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42,
                (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, panel], axis=0)


def legend(classes, palette: np.ndarray, width: int) -> np.ndarray:
    """One row of colour swatches with class names."""
    per_row = max(1, width // 110)
    rows = []
    for start in range(0, len(classes), per_row):
        row = np.full((20, width, 3), 255, np.uint8)
        for j, name in enumerate(classes[start:start + per_row]):
            x = j * 110 + 4
            color = tuple(int(c) for c in palette[start + j])
            cv2.rectangle(row, (x, 4), (x + 12, 16), color, -1)
            cv2.putText(row, str(name), (x + 16, 15),
                        cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1,
                        cv2.LINE_AA)
        rows.append(row)
    return np.concatenate(rows, axis=0)


def main() -> None:
    args = parse_args()
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    model = init_model(cfg, args.checkpoint, device=args.device)
    dataset_cfg = cfg.test_dataloader.dataset.copy()
    dataset_cfg['pipeline'] = []
    dataset = DATASETS.build(dataset_cfg)
    classes = dataset.metainfo['classes']
    palette = np.asarray(dataset.metainfo['palette'], np.uint8)
    ignore_index = dataset.ignore_index

    rows = []
    for i in range(min(args.num, len(dataset))):
        info = dataset.get_data_info(i)
        image = cv2.imread(info['img_path'], cv2.IMREAD_COLOR)[..., ::-1]
        gt = cv2.imread(info['seg_map_path'], cv2.IMREAD_UNCHANGED)
        if info.get('reduce_zero_label', False):
            # ADE20K convention: 0 = other (ignored), 1..K -> 0..K-1
            gt = gt.astype(np.int64) - 1
            gt[gt < 0] = ignore_index
        result = inference_model(model, info['img_path'])
        pred = result.pred_sem_seg.data[0].cpu().numpy()
        panels = [image, colorize(gt, palette, ignore_index),
                  colorize(pred, palette, ignore_index)]
        h, w = image.shape[:2]
        panels = [
            cv2.resize(
                np.ascontiguousarray(p), (w * args.scale, h * args.scale),
                interpolation=cv2.INTER_NEAREST) for p in panels
        ]
        if i == 0:
            panels = [
                caption(p, t) for p, t in zip(
                    panels, ['image', 'ground truth (black: other)',
                             'prediction'])
            ]
        gap = np.full((panels[0].shape[0], 4, 3), 255, np.uint8)
        rows.append(
            np.concatenate(
                [panels[0], gap, panels[1], gap, panels[2]], axis=1))
        rows.append(np.full((4, rows[-1].shape[1], 3), 255, np.uint8))
    grid = np.concatenate(rows, axis=0)
    grid = np.concatenate([grid, legend(classes, palette, grid.shape[1])],
                          axis=0)
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    cv2.imwrite(args.out, grid[..., ::-1])
    print(f'wrote {args.out} ({min(args.num, len(dataset))} images: '
          'image | ground truth | prediction)')


if __name__ == '__main__':
    main()
