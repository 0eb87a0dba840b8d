"""Builds the texture-mosaic segmentation dataset from photographs in scikit-image.

Every image is a mosaic of irregular regions (Voronoi cells with a smoothly
warped distance, so boundaries are curved) and every region is filled with a
patch of one photograph. The label of a region is the photograph's class; a few
regions are filled from "other" photographs and labelled 0, the ignore/"other"
label of ADE20K's convention (``reduce_zero_label=True`` turns 1..K into 0..K-1
and 0 into 255).

Generalisation, not memorisation: each photograph is split into two disjoint
column ranges, the left part (``train_fraction`` of its width) feeds the
training split and the right part feeds the validation split, so no source pixel
of a validation image was ever seen in training. Every region's source window
is recorded in ``texture_mosaic.json`` (see :func:`render_cell`, which redraws a
region from that record).

The maker needs numpy, OpenCV and scikit-image only, and is deterministic for a
given seed: the random stream of image ``i`` of a split is seeded by
``(seed, split, i)``.
"""
from __future__ import annotations

import json
import os
import os.path as osp
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

META_FILE = 'texture_mosaic.json'
FORMAT_VERSION = 1
SPLITS = ('training', 'validation')


@dataclass(frozen=True)
class TextureSource:
    """A photograph shipped in ``skimage.data`` used as one texture.

    Attributes:
        name: Class name (or a descriptive name for "other" sources).
        loader: Name of the ``skimage.data`` function returning the photo.
        box: Optional crop ``(y0, x0, y1, x1)`` applied first (e.g. the inside
            of the retina's circular field of view).
        scale: Resize factor applied after the crop (texture grain size).
    """
    name: str
    loader: str
    box: Optional[Tuple[int, int, int, int]] = None
    scale: float = 1.0


#: The K = 8 classes, labels 1..8 in this order.
CLASS_SOURCES: Tuple[TextureSource, ...] = (
    TextureSource('brick', 'brick'),
    TextureSource('grass', 'grass'),
    TextureSource('gravel', 'gravel'),
    TextureSource('moon', 'moon'),
    TextureSource('galaxies', 'hubble_deep_field'),
    TextureSource('tissue', 'immunohistochemistry'),
    TextureSource('retina', 'retina', box=(260, 260, 1150, 1150), scale=0.5),
    TextureSource('fur', 'chelsea'),
)
#: Photographs whose regions are labelled 0 ("other", ignored in training).
OTHER_SOURCES: Tuple[TextureSource, ...] = (
    TextureSource('astronaut', 'astronaut'),
    TextureSource('coffee', 'coffee'),
    TextureSource('rocket', 'rocket'),
    TextureSource('camera', 'camera'),
)
CLASSES: Tuple[str, ...] = tuple(s.name for s in CLASS_SOURCES)
PALETTE: List[List[int]] = [[180, 70, 50], [70, 180, 60], [150, 150, 150],
                            [230, 230, 120], [40, 40, 160], [200, 90, 200],
                            [250, 130, 30], [60, 200, 220]]


def _fine(source: TextureSource) -> TextureSource:
    """The same photograph at half the grain size."""
    return TextureSource(source.name + '_fine', source.loader, source.box,
                         source.scale * 0.5)


#: Class sets, selected by ``MosaicSpec.classes``: ``'texture8'`` (the
#: default above) and ``'grain16'``, every photograph at its own grain and at
#: half of it (16 classes: telling a texture from its finer self needs the
#: spatial-frequency content of the patch, not only its look).
CLASS_SETS: Dict[str, Tuple[TextureSource, ...]] = {
    'texture8': CLASS_SOURCES,
    'grain16': CLASS_SOURCES + tuple(_fine(s) for s in CLASS_SOURCES),
}


def class_names(class_set: str = 'texture8') -> Tuple[str, ...]:
    """Class names (labels 1..K) of a class set."""
    if class_set not in CLASS_SETS:
        raise ValueError(f'unknown class set {class_set!r}; valid: '
                         f'{sorted(CLASS_SETS)}')
    return tuple(s.name for s in CLASS_SETS[class_set])


def class_palette(class_set: str = 'texture8') -> List[List[int]]:
    """A palette for a class set (the 8 colours, darker for the fine set)."""
    n = len(class_names(class_set))
    return [PALETTE[i % len(PALETTE)] if i < len(PALETTE) else
            [c // 2 for c in PALETTE[i % len(PALETTE)]] for i in range(n)]


def load_source(source: TextureSource, gray: bool = False) -> np.ndarray:
    """Loads a source photograph as an RGB ``uint8`` array (crop, resize).

    Args:
        source: The texture source.
        gray: Replace the colours by the luminance (kept as 3 equal
            channels), so that classes differ by texture only.

    Returns:
        np.ndarray: ``(H, W, 3)`` uint8 RGB image.
    """
    import skimage.data  # imported here: slow, and only the maker needs it

    image = np.asarray(getattr(skimage.data, source.loader)())
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    image = np.ascontiguousarray(image[..., :3].astype(np.uint8))
    if source.box is not None:
        y0, x0, y1, x1 = source.box
        image = image[y0:y1, x0:x1]
    if source.scale != 1.0:
        h, w = image.shape[:2]
        image = cv2.resize(
            image, (round(w * source.scale), round(h * source.scale)),
            interpolation=cv2.INTER_AREA)
    if gray:
        luma = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        image = np.repeat(luma[..., None], 3, axis=2)
    return np.ascontiguousarray(image)


def split_boxes(shape: Sequence[int],
                train_fraction: float) -> Dict[str, Tuple[int, int, int, int]]:
    """Disjoint source regions of one photograph for the two splits.

    Args:
        shape: ``(H, W, ...)`` of the prepared photograph.
        train_fraction: Fraction of the width (from the left) for training.

    Returns:
        dict: split name -> ``(y0, x0, y1, x1)`` (end-exclusive) box.
    """
    h, w = int(shape[0]), int(shape[1])
    cut = int(round(w * train_fraction))
    if not 0 < cut < w:
        raise ValueError(f'train_fraction={train_fraction} leaves an empty '
                         'split; use a value strictly between 0 and 1.')
    return {'training': (0, 0, h, cut), 'validation': (0, cut, h, w)}


def voronoi_layout(rng: np.random.Generator, size: int, min_cells: int,
                   max_cells: int, warp: float) -> np.ndarray:
    """Irregular region map: Voronoi cells of a smoothly warped plane.

    Args:
        rng: Random generator.
        size: Side of the square image.
        min_cells: Minimum number of cells.
        max_cells: Maximum number of cells.
        warp: Warp amplitude as a fraction of ``size``.

    Returns:
        np.ndarray: ``(size, size)`` int array of cell ids (0..n-1; a cell
        may end up empty).
    """
    n = int(rng.integers(min_cells, max_cells + 1))
    seeds = rng.uniform(0, size, size=(n, 2))
    # A coarse random field upsampled with cubic interpolation gives a smooth
    # displacement, which bends the straight Voronoi edges.
    coarse = rng.uniform(-1, 1, size=(2, 5, 5)).astype(np.float32)
    disp = np.stack([
        cv2.resize(c, (size, size), interpolation=cv2.INTER_CUBIC)
        for c in coarse
    ]) * (warp * size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    py, px = yy + disp[0], xx + disp[1]
    d2 = (py[None] - seeds[:, 0, None, None])**2 + \
        (px[None] - seeds[:, 1, None, None])**2
    return np.argmin(d2, axis=0)


def render_cell(source_image: np.ndarray, window: Sequence[int],
                size_hw: Sequence[int], hflip: bool,
                vflip: bool) -> np.ndarray:
    """Draws the patch of one region from its recorded source window.

    Args:
        source_image: Prepared photograph (``load_source``).
        window: ``(y0, x0, y1, x1)`` source window, end-exclusive.
        size_hw: ``(h, w)`` of the region's bounding box.
        hflip: Mirror left-right.
        vflip: Mirror top-bottom.

    Returns:
        np.ndarray: ``(h, w, 3)`` uint8 patch.
    """
    y0, x0, y1, x1 = window
    patch = source_image[y0:y1, x0:x1]
    h, w = int(size_hw[0]), int(size_hw[1])
    shrink = patch.shape[0] * patch.shape[1] > h * w
    patch = cv2.resize(
        patch, (w, h),
        interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    if hflip:
        patch = patch[:, ::-1]
    if vflip:
        patch = patch[::-1]
    return np.ascontiguousarray(patch)


def _sample_window(rng: np.random.Generator, box: Sequence[int], h: int,
                   w: int, min_scale: float) -> Tuple[int, int, int, int]:
    """Random source window inside ``box`` for a region of bbox ``h x w``."""
    by0, bx0, by1, bx1 = box
    bh, bw = by1 - by0, bx1 - bx0
    # scale = output px / source px; >= min_scale keeps grain size similar
    # across regions, and the window must fit in the split's part.
    lo = max(min_scale, h / bh, w / bw)
    scale = float(rng.uniform(lo, max(lo, 1.0)))
    wh = min(bh, max(1, int(round(h / scale))))
    ww = min(bw, max(1, int(round(w / scale))))
    y0 = by0 + int(rng.integers(0, bh - wh + 1))
    x0 = bx0 + int(rng.integers(0, bw - ww + 1))
    return y0, x0, y0 + wh, x0 + ww


def make_mosaic(rng: np.random.Generator, sources: Dict[str, np.ndarray],
                boxes: Dict[str, Tuple[int, int, int, int]], size: int,
                other_prob: float, min_cells: int = 3, max_cells: int = 7,
                warp: float = 0.08, min_scale: float = 0.6,
                class_sources: Sequence[TextureSource] = CLASS_SOURCES
                ) -> Tuple[np.ndarray, np.ndarray, list]:
    """Draws one mosaic image and its label map.

    Args:
        rng: Random generator of this image.
        sources: source name -> prepared photograph, classes first then
            "other" sources (names as in :data:`CLASS_SOURCES` and
            :data:`OTHER_SOURCES`).
        boxes: source name -> the box of this split in that photograph.
        size: Image side.
        other_prob: Probability that a region is filled from an "other"
            photograph (label 0).
        min_cells: Minimum number of regions.
        max_cells: Maximum number of regions.
        warp: Boundary warp amplitude (fraction of ``size``).
        min_scale: Smallest resize factor from source to image.
        class_sources: The classes (labels 1..K in this order).

    Returns:
        tuple: ``(image (size, size, 3) uint8 RGB, label (size, size) uint8,
        cells)``; ``cells`` records each region's source and window.
    """
    layout = voronoi_layout(rng, size, min_cells, max_cells, warp)
    image = np.zeros((size, size, 3), np.uint8)
    label = np.zeros((size, size), np.uint8)
    cells = []
    for cell_id in range(int(layout.max()) + 1):
        mask = layout == cell_id
        if not mask.any():
            continue
        if rng.uniform() < other_prob:
            other = OTHER_SOURCES[int(rng.integers(len(OTHER_SOURCES)))]
            name, value = other.name, 0
        else:
            k = int(rng.integers(len(class_sources)))
            name, value = class_sources[k].name, k + 1
        ys, xs = np.nonzero(mask)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        h, w = int(y1 - y0), int(x1 - x0)
        window = _sample_window(rng, boxes[name], h, w, min_scale)
        hflip, vflip = bool(rng.integers(2)), bool(rng.integers(2))
        patch = render_cell(sources[name], window, (h, w), hflip, vflip)
        sub = mask[y0:y1, x0:x1]
        image[y0:y1, x0:x1][sub] = patch[sub]
        label[y0:y1, x0:x1][sub] = value
        cells.append(
            dict(
                cell=cell_id,
                source=name,
                label=value,
                bbox=[int(y0), int(x0), int(y1), int(x1)],
                window=[int(v) for v in window],
                hflip=hflip,
                vflip=vflip))
    return image, label, cells


@dataclass
class MosaicSpec:
    """Parameters of a dataset build (stored in the meta file)."""
    seed: int = 0
    size: int = 128
    num_train: int = 300
    num_val: int = 60
    train_fraction: float = 0.7
    other_prob: float = 0.1
    min_cells: int = 3
    max_cells: int = 7
    gray: bool = False
    classes: str = 'texture8'


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Independent random stream of image ``index`` of ``split``."""
    return np.random.default_rng(
        np.random.SeedSequence([seed, SPLITS.index(split), index]))


def read_meta(out_dir: str) -> Optional[dict]:
    """The meta record of a built dataset, or None if there is none."""
    path = osp.join(out_dir, META_FILE)
    if not osp.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def is_built(out_dir: str, spec: Optional[MosaicSpec] = None) -> bool:
    """True when ``out_dir`` holds a complete build (of ``spec`` if given)."""
    meta = read_meta(out_dir)
    if meta is None or meta.get('format_version') != FORMAT_VERSION:
        return False
    if spec is not None and meta.get('spec') != asdict(spec):
        return False
    for split in SPLITS:
        for rec in meta['images'][split]:
            for key in ('img', 'ann'):
                if not osp.isfile(osp.join(out_dir, rec[key])):
                    return False
    return True


def build_dataset(out_dir: str, spec: MosaicSpec = MosaicSpec(),
                  verbose: bool = True) -> dict:
    """Writes the dataset to ``out_dir`` (ADE20K layout) and returns the meta.

    Layout: ``images/{training,validation}/mosaic_XXXXX.png`` (RGB) and
    ``annotations/{training,validation}/mosaic_XXXXX.png`` (uint8 labels,
    0 = other/ignore, 1..K = classes), plus ``texture_mosaic.json``.

    Args:
        out_dir: Output folder (created).
        spec: Build parameters.
        verbose: Print progress.

    Returns:
        dict: The meta record that was written.
    """
    if spec.size < 16:
        raise ValueError(f'size={spec.size} is too small; use >= 16.')
    if spec.min_cells < 1 or spec.max_cells < spec.min_cells:
        raise ValueError('need 1 <= min_cells <= max_cells, got '
                         f'{spec.min_cells}, {spec.max_cells}.')
    names = class_names(spec.classes)  # raises on an unknown set
    class_sources = CLASS_SETS[spec.classes]
    all_sources = tuple(class_sources) + OTHER_SOURCES
    images = {s.name: load_source(s, spec.gray) for s in all_sources}
    boxes = {
        s.name: split_boxes(images[s.name].shape, spec.train_fraction)
        for s in all_sources
    }
    meta = dict(
        format_version=FORMAT_VERSION,
        classes=list(names),
        palette=class_palette(spec.classes),
        label_convention='0 = other/ignore, 1..K = classes (ADE20K)',
        spec=asdict(spec),
        sources={
            s.name:
            dict(
                loader=s.loader,
                box=s.box,
                scale=s.scale,
                shape=list(images[s.name].shape),
                label=(names.index(s.name) + 1 if s.name in names else 0),
                split_boxes=boxes[s.name])
            for s in all_sources
        },
        images={})
    counts = dict(training=spec.num_train, validation=spec.num_val)
    # A rebuild first drops the old completion marker and old mosaics, so a
    # smaller rebuild leaves no stale files for the dataset's folder scan.
    if osp.isfile(osp.join(out_dir, META_FILE)):
        os.remove(osp.join(out_dir, META_FILE))
    for split in SPLITS:
        for sub in ('images', 'annotations'):
            folder = osp.join(out_dir, sub, split)
            os.makedirs(folder, exist_ok=True)
            for fname in os.listdir(folder):
                if fname.startswith('mosaic_') and fname.endswith('.png'):
                    os.remove(osp.join(folder, fname))
        split_boxes_ = {name: b[split] for name, b in boxes.items()}
        records = []
        for i in range(counts[split]):
            rng = image_rng(spec.seed, split, i)
            image, label, cells = make_mosaic(
                rng, images, split_boxes_, spec.size, spec.other_prob,
                spec.min_cells, spec.max_cells,
                class_sources=class_sources)
            stem = f'mosaic_{i:05d}'
            img_rel = osp.join('images', split, stem + '.png')
            ann_rel = osp.join('annotations', split, stem + '.png')
            cv2.imwrite(osp.join(out_dir, img_rel), image[..., ::-1])
            cv2.imwrite(osp.join(out_dir, ann_rel), label)
            records.append(dict(img=img_rel, ann=ann_rel, cells=cells))
        meta['images'][split] = records
        if verbose:
            print(f'{split}: {len(records)} images of {spec.size}x{spec.size}'
                  f' -> {osp.join(out_dir, "images", split)}')
    # The meta file is written last: its presence marks a complete build.
    with open(osp.join(out_dir, META_FILE), 'w') as f:
        json.dump(meta, f)
    return meta
