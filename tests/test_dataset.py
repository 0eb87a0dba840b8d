"""The texture-mosaic dataset: maker determinism, labels, disjoint train /
validation sources, and the registered dataset type."""
import filecmp

import cv2
import numpy as np
import pytest

import mmseg_didb  # noqa: F401
from mmseg_didb.datasets import TextureMosaicDataset
from mmseg_didb.datasets.texture_maker import (CLASS_SOURCES, CLASSES,
                                               OTHER_SOURCES, PALETTE, SPLITS,
                                               MosaicSpec, build_dataset,
                                               image_rng, is_built,
                                               load_source, make_mosaic,
                                               read_meta, split_boxes)

SPEC = MosaicSpec(seed=0, size=64, num_train=8, num_val=4)


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob('*.png'))


def test_classes_and_sources():
    assert len(CLASSES) >= 8 and len(set(CLASSES)) == len(CLASSES)
    assert {'brick', 'grass', 'gravel'} <= set(CLASSES)
    loaders = [s.loader for s in CLASS_SOURCES + OTHER_SOURCES]
    assert len(set(loaders)) == len(loaders)  # distinct photographs
    assert len(PALETTE) == len(CLASSES)
    assert TextureMosaicDataset.METAINFO['classes'] == CLASSES


def test_deterministic_for_a_seed(texture_data, tmp_path):
    again = tmp_path / 'again'
    build_dataset(str(again), SPEC, verbose=False)
    files = _files(texture_data)
    assert files == _files(again) and len(files) == 2 * (8 + 4)
    match, mismatch, errors = filecmp.cmpfiles(
        texture_data, again, [str(f) for f in files], shallow=False)
    assert not mismatch and not errors
    assert read_meta(str(again)) == read_meta(str(texture_data))
    other = tmp_path / 'other_seed'
    build_dataset(
        str(other),
        MosaicSpec(seed=1, size=64, num_train=8, num_val=4),
        verbose=False)
    first = 'images/training/mosaic_00000.png'
    assert not filecmp.cmp(texture_data / first, other / first, shallow=False)


def test_layout_and_label_range(texture_data):
    meta = read_meta(str(texture_data))
    assert meta['classes'] == list(CLASSES)
    seen = set()
    for split, count in (('training', 8), ('validation', 4)):
        images = sorted((texture_data / 'images' / split).glob('*.png'))
        labels = sorted((texture_data / 'annotations' / split).glob('*.png'))
        assert len(images) == len(labels) == count
        for img_path, ann_path in zip(images, labels):
            assert img_path.name == ann_path.name
            img = cv2.imread(str(img_path), cv2.IMREAD_UNCHANGED)
            ann = cv2.imread(str(ann_path), cv2.IMREAD_UNCHANGED)
            assert img.shape == (64, 64, 3) and img.dtype == np.uint8
            assert ann.shape == (64, 64) and ann.dtype == np.uint8
            assert ann.max() <= len(CLASSES)
            seen |= set(np.unique(ann).tolist())
    # 0 (other) and most classes occur in this small build
    assert 0 in seen and len(seen - {0}) >= 5


def test_label_matches_cell_sources(texture_data):
    """Each region's label is the class of the photo it was cut from."""
    meta = read_meta(str(texture_data))
    for rec in meta['images']['training']:
        ann = cv2.imread(str(texture_data / rec['ann']), cv2.IMREAD_UNCHANGED)
        for cell in rec['cells']:
            expected = CLASSES.index(cell['source']) + 1 \
                if cell['source'] in CLASSES else 0
            assert cell['label'] == expected
            y0, x0, y1, x1 = cell['bbox']
            assert (ann[y0:y1, x0:x1] == expected).any()


def test_train_and_val_sources_are_disjoint(texture_data):
    meta = read_meta(str(texture_data))
    for name, source in meta['sources'].items():
        train, val = (source['split_boxes'][s] for s in SPLITS)
        # no overlap of the two boxes
        assert train[3] <= val[1] or val[3] <= train[1] or \
            train[2] <= val[0] or val[2] <= train[0]
    for split in SPLITS:
        for rec in meta['images'][split]:
            for cell in rec['cells']:
                by0, bx0, by1, bx1 = \
                    meta['sources'][cell['source']]['split_boxes'][split]
                y0, x0, y1, x1 = cell['window']
                assert by0 <= y0 < y1 <= by1 and bx0 <= x0 < x1 <= bx1


@pytest.mark.parametrize('split', SPLITS)
def test_images_use_no_pixel_of_the_other_split(texture_data, split):
    """Redraw the images with the other split's part of every photo painted
    black, then white: the images must not change, so no pixel came from
    there. Painting this split's own part must change them."""
    sources = {s.name: load_source(s) for s in CLASS_SOURCES + OTHER_SOURCES}
    boxes = {
        name: split_boxes(img.shape, SPEC.train_fraction)
        for name, img in sources.items()
    }
    other = SPLITS[1 - SPLITS.index(split)]
    meta = read_meta(str(texture_data))
    count = len(meta['images'][split])

    def redraw(paint_split, value):
        painted = {}
        for name, img in sources.items():
            img = img.copy()
            y0, x0, y1, x1 = boxes[name][paint_split]
            img[y0:y1, x0:x1] = value
            painted[name] = img
        own = {name: b[split] for name, b in boxes.items()}
        return [
            make_mosaic(
                image_rng(SPEC.seed, split, i), painted, own, SPEC.size,
                SPEC.other_prob, SPEC.min_cells, SPEC.max_cells)[0]
            for i in range(count)
        ]

    saved = [
        cv2.imread(str(texture_data / rec['img']))[..., ::-1]
        for rec in meta['images'][split]
    ]
    for value in (0, 255):
        for a, b in zip(redraw(other, value), saved):
            np.testing.assert_array_equal(a, b)
    changed = [not np.array_equal(a, b)
               for a, b in zip(redraw(split, 0), saved)]
    assert all(changed)


def test_rebuild_skips_or_replaces(texture_data, tmp_path):
    assert is_built(str(texture_data), SPEC)
    assert not is_built(str(texture_data),
                        MosaicSpec(seed=5, size=64, num_train=8, num_val=4))
    root = tmp_path / 'tm'
    build_dataset(str(root), MosaicSpec(size=32, num_train=4, num_val=2),
                  verbose=False)
    build_dataset(str(root), MosaicSpec(size=32, num_train=2, num_val=1),
                  verbose=False)
    # a smaller rebuild leaves no stale images behind
    assert len(list((root / 'images' / 'training').glob('*.png'))) == 2
    assert len(list((root / 'annotations' / 'training').glob('*.png'))) == 2
    assert not is_built(str(tmp_path / 'missing'))


def test_bad_spec_is_rejected(tmp_path):
    with pytest.raises(ValueError, match='size'):
        build_dataset(str(tmp_path), MosaicSpec(size=8), verbose=False)
    with pytest.raises(ValueError, match='train_fraction'):
        split_boxes((100, 100), 1.0)


def test_dataset_type_loads_with_ade_conventions(texture_data):
    from mmengine.registry import DefaultScope
    from mmseg.registry import DATASETS
    cfg = dict(
        type='TextureMosaicDataset',
        data_root=str(texture_data),
        data_prefix=dict(
            img_path='images/validation',
            seg_map_path='annotations/validation'),
        pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='LoadAnnotations', reduce_zero_label=True),
            dict(type='PackSegInputs')
        ])
    with DefaultScope.overwrite_default_scope('mmseg'):
        dataset = DATASETS.build(cfg)
        sample = dataset[0]
    assert isinstance(dataset, TextureMosaicDataset)
    assert len(dataset) == 4
    assert dataset.metainfo['classes'] == CLASSES
    assert dataset.metainfo['palette'] == PALETTE
    assert dataset.reduce_zero_label
    gt = sample['data_samples'].gt_sem_seg.data.numpy()
    raw = cv2.imread(
        dataset.get_data_info(0)['seg_map_path'], cv2.IMREAD_UNCHANGED)
    expected = raw.astype(np.int64) - 1
    expected[raw == 0] = 255  # "other" -> ignore
    np.testing.assert_array_equal(gt[0], expected)


def test_missing_dataset_names_the_fix(tmp_path):
    from mmseg.registry import DATASETS
    with pytest.raises(FileNotFoundError, match='make_texture_dataset.py'):
        DATASETS.build(
            dict(
                type='TextureMosaicDataset',
                data_root=str(tmp_path / 'nowhere'),
                data_prefix=dict(
                    img_path='images/training',
                    seg_map_path='annotations/training')))


def test_reduce_zero_label_is_fixed(texture_data):
    with pytest.raises(ValueError, match='reduce_zero_label'):
        TextureMosaicDataset(
            data_root=str(texture_data), reduce_zero_label=False)
