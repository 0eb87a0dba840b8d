"""Bad inputs get clear errors or correct results: grayscale, RGBA and
16-bit images; inputs smaller than a window or a patch; label values above
num_classes; load_from a checkpoint with another num_classes; a truncated
checkpoint; unknown preset keys."""
import mmseg_didb  # noqa: F401  (first: compat fixes)

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import ConfigDict
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS

from conftest import write_binary_config
from mmseg_didb.analysis.benchmark import make_batch
from mmseg_didb.binary import resolve_preset
from mmseg_didb.datasets.texture_maker import MosaicSpec, build_dataset
from mmseg_didb.models.utils import CorruptCheckpointError, read_checkpoint

init_default_scope('mmseg')
torch.set_num_threads(2)


def segmentor(preset='didb', num_classes=4, backbone='DIDBSwin'):
    if backbone == 'DIDBSwin':
        bb = dict(type='DIDBSwin', preset=preset, embed_dims=32,
                  depths=(1, 1), num_heads=(1, 2), window_size=4,
                  out_indices=(0, 1), pretrain_img_size=32,
                  drop_path_rate=0.)
        neck, channels = None, [32, 64]
    else:
        bb = dict(type='DIDBViT', preset=preset, embed_dims=32,
                  num_layers=2, num_heads=1, img_size=32, patch_size=8,
                  out_indices=(0, 1))
        neck = dict(type='BinaryMultiLevelNeck', preset=preset,
                    in_channels=[32, 32], out_channels=32, scales=[2, 1])
        channels = [32, 32]
    cfg = dict(
        type='BinaryEncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor'),
        backbone=bb,
        decode_head=dict(type='BinaryFCNHead', preset=preset,
                         in_channels=channels[-1], in_index=1, channels=16,
                         num_convs=1, concat_input=False,
                         num_classes=num_classes,
                         loss_decode=dict(type='CrossEntropyLoss')),
        test_cfg=ConfigDict(mode='whole'))
    if neck:
        cfg['neck'] = neck
    return MODELS.build(cfg)


def test_grayscale_rgba_and_16_bit_images_train(tmp_path, run_tool):
    """Image files of other formats load as 8-bit 3-channel images (mmcv's
    'color' decoding) and train."""
    root = tmp_path / 'data'
    build_dataset(str(root), MosaicSpec(seed=0, size=64, num_train=3,
                                        num_val=3), verbose=False)
    for split in ('training', 'validation'):
        files = sorted((root / 'images' / split).glob('*.png'))
        gray = cv2.cvtColor(cv2.imread(str(files[0])), cv2.COLOR_BGR2GRAY)
        cv2.imwrite(str(files[0]), gray)
        rgba = cv2.cvtColor(cv2.imread(str(files[1])), cv2.COLOR_BGR2BGRA)
        cv2.imwrite(str(files[1]), rgba)
        deep = cv2.imread(str(files[2])).astype(np.uint16) * 257
        cv2.imwrite(str(files[2]), deep)
        assert cv2.imread(str(files[2]), cv2.IMREAD_UNCHANGED).dtype == \
            np.uint16
    from mmseg_didb.datasets import TextureMosaicDataset
    ds = TextureMosaicDataset(
        data_root=str(root),
        data_prefix=dict(img_path='images/training',
                         seg_map_path='annotations/training'),
        pipeline=[dict(type='LoadImageFromFile'),
                  dict(type='LoadAnnotations', reduce_zero_label=True),
                  dict(type='PackSegInputs')])
    for i in range(3):
        img = ds[i]['inputs']
        assert img.shape == (3, 64, 64) and img.dtype == torch.uint8
    # the 16-bit file is scaled to 8 bits, not wrapped around
    assert int(ds[2]['inputs'].max()) > 200
    cfg = write_binary_config(tmp_path / 'c.py', root, iters=2,
                              ckpt_interval=2)
    proc = run_tool(['tools/train.py', cfg, '--work-dir', tmp_path / 'w'])
    assert 'Iter(train) [2/2]' in proc.stdout


@pytest.mark.parametrize('backbone', ['DIDBSwin', 'DIDBViT'])
@pytest.mark.parametrize('size', [(5, 7), (12, 20), (3, 3)])
def test_inputs_smaller_than_a_window_or_a_patch(backbone, size):
    """Smaller than the window (one clamped window) or than a patch (padded
    to one patch): the model predicts a map of the input size."""
    torch.manual_seed(0)
    model = segmentor(backbone=backbone).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        logits = model._forward(x)
        pred = model.predict(x)
    assert torch.isfinite(logits).all()
    assert pred[0].pred_sem_seg.data.shape == (1, *size)


def test_label_values_above_num_classes_are_refused():
    model = segmentor(num_classes=4)
    inputs, samples = make_batch(2, (32, 32), 4, torch.device('cpu'))
    samples[1].gt_sem_seg.data[0, :3, :3] = 7
    samples[1].gt_sem_seg.data[0, 5, 5] = 255  # the ignore index is fine
    with pytest.raises(ValueError, match=r'\[7\] outside the 4 classes'):
        model.loss(inputs, samples)
    with pytest.raises(ValueError, match='reduce_zero_label'):
        model.eval().predict(inputs, samples)
    samples[1].gt_sem_seg.data[0, :3, :3] = 3
    model.train()
    assert torch.isfinite(sum(v for k, v in model.loss(
        inputs, samples).items() if 'loss' in k))


def test_load_from_another_num_classes_names_keys_and_shapes(
        tmp_path, texture_data, run_tool):
    cfg = write_binary_config(tmp_path / 'a.py', texture_data, iters=1,
                              ckpt_interval=1)
    run_tool(['tools/train.py', cfg, '--work-dir', tmp_path / 'a'])
    other = write_binary_config(
        tmp_path / 'b.py', texture_data, iters=1, ckpt_interval=1,
        num_classes=9,
        extra=f"load_from = {str(tmp_path / 'a' / 'iter_1.pth')!r}\n")
    proc = run_tool(['tools/train.py', other, '--work-dir', tmp_path / 'b'])
    assert 'size mismatch for decode_head.conv_seg.weight' in proc.stdout
    assert 'torch.Size([8, 16, 1, 1])' in proc.stdout
    assert 'torch.Size([9, 16, 1, 1])' in proc.stdout


def test_truncated_checkpoint_gets_a_clear_error(tmp_path, run_tool,
                                                 tiny_config):
    path = tmp_path / 'full.pth'
    torch.save({'state_dict': {'w': torch.randn(4096)}}, path)
    data = path.read_bytes()
    for i, cut in enumerate((len(data) // 2, 30, 0)):
        bad = tmp_path / f'cut{i}.pth'
        bad.write_bytes(data[:cut])
        with pytest.raises(CorruptCheckpointError, match='truncated'):
            read_checkpoint(str(bad))
    proc = run_tool(['tools/test.py', tiny_config, tmp_path / 'cut0.pth',
                     '--work-dir', tmp_path / 't'], check=False)
    assert proc.returncode != 0
    assert 'truncated or corrupt' in proc.stdout


def test_unknown_preset_or_override_key_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown binary preset 'xnor'"):
        resolve_preset('xnor')
    with pytest.raises(ValueError, match='valid keys'):
        resolve_preset('didb', hsfc=False)
    with pytest.raises(ValueError, match='valid'):
        segmentor(preset=dict(name='didb', diba=True))
