"""timm registration of the binary backbones and tools/pretrain_cls.py."""
import importlib.util
import json
import os.path as osp
import warnings

import mmseg_didb  # noqa: F401  (first: installs shims, registers timm models)
import pytest
import timm
import torch
from mmengine.config import ConfigDict
from mmengine.registry import init_default_scope
from mmengine.structures import PixelData
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

from mmseg_didb.binary import binarization_state
from mmseg_didb.timm_models import DIDBClassifier

torch.set_num_threads(1)
init_default_scope('mmseg')

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))

SWIN_KW = dict(img_size=32, embed_dims=16, depths=[1, 1], num_heads=[1, 2],
               window_size=4)
DEIT_KW = dict(img_size=32, patch_size=8, embed_dims=32, num_layers=2,
               num_heads=2)
TEACHER_KW = dict(img_size=32, patch_size=8, embed_dim=32, depth=1,
                  num_heads=2)


def load_tool(name):
    spec = importlib.util.spec_from_file_location(
        name, osp.join(ROOT, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def cls_folder(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('cls'))
    counts = load_tool('make_cls_folder').make_folder(
        root, classes=('brick', 'grass', 'coins'), size=32,
        train_per_class=2, val_per_class=1)
    assert counts == {'train': 6, 'val': 3}
    return root


def pretrain(args):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return load_tool('pretrain_cls').main(args)


def test_timm_registration_and_presets():
    names = set(timm.list_models('didb_*'))
    assert {
        'didb_swin_tiny_patch4_window7_224',
        'didb_swin_small_patch4_window7_224',
        'didb_swin_base_patch4_window7_224', 'didb_deit_tiny_patch16_224',
        'didb_deit_small_patch16_224', 'didb_deit_base_patch16_224'
    } <= names
    x = torch.randn(2, 3, 32, 32)
    for preset in ('fp', 'react', 'didb'):
        model = timm.create_model(
            'didb_swin_tiny_patch4_window7_224', num_classes=5,
            preset=preset, **SWIN_KW)
        assert isinstance(model, DIDBClassifier)
        assert model.backbone.preset.name == preset
        assert model(x).shape == (2, 5)
    deit = timm.create_model('didb_deit_small_patch16_224', num_classes=4,
                             preset='binaryvit', **DEIT_KW)
    assert deit.backbone.preset.name == 'binaryvit'
    assert deit(x).shape == (2, 4)
    assert deit.forward_head(deit.forward_features(x),
                             pre_logits=True).shape == (2, 32)
    # arch defaults: Swin-T widths, DeiT-S width
    assert timm.create_model('didb_swin_tiny_patch4_window7_224',
                             num_classes=0, preset='fp').num_features == 768
    assert timm.create_model(
        'didb_deit_small_patch16_224', num_classes=0, preset='fp',
        num_layers=1).num_features == 384
    with pytest.raises(ValueError, match='pretrained'):
        timm.create_model('didb_swin_tiny_patch4_window7_224',
                          pretrained=True)


def seg_backbone_cfg(checkpoint, prefix):
    return dict(
        type='DIDBSwin', preset='react', embed_dims=16, depths=(1, 1),
        num_heads=(1, 2),
        window_size=4, pretrain_img_size=32, out_indices=(0, 1),
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint,
                      prefix=prefix))


def test_pretrain_two_iterations_kd_and_finetune(cls_folder, tmp_path):
    work = str(tmp_path / 'swin')
    base = [
        cls_folder, '--model', 'didb_swin_tiny_patch4_window7_224',
        '--preset', 'react', '--model-kwargs', json.dumps(SWIN_KW),
        '--img-size', '32', '--batch-size', '2', '--max-iters', '2',
        '--epochs', '5', '--num-workers', '0', '--work-dir', work,
        '--teacher', 'vit_tiny_patch16_224', '--teacher-kwargs',
        json.dumps(TEACHER_KW)
    ]
    with pytest.raises(SystemExit, match='teacher-checkpoint'):
        pretrain(base)
    last = pretrain(base + ['--allow-random-teacher', '--no-progress'])
    assert last == osp.join(work, 'iter_2.pth')
    records = [json.loads(line) for line in open(osp.join(work,
                                                          'log.jsonl'))]
    steps = [r for r in records if 'loss' in r]
    assert [r['iter'] for r in steps] == [1, 2]
    assert all(r['kd'] > 0 and 'ce' not in r for r in steps)
    assert 'val_top1' in records[-1]

    ckpt = torch.load(last, map_location='cpu', weights_only=False)
    assert {'state_dict', 'optimizer', 'scheduler', 'meta'} <= set(ckpt)
    full = ckpt['state_dict']
    bb_keys = {k[len('backbone.'):] for k in full if k.startswith('backbone.')}
    assert set(full) - {f'backbone.{k}' for k in bb_keys} == {
        'head.weight', 'head.bias'}

    # the full checkpoint (prefix 'backbone.') and the backbone-only export
    # load into the mmseg backbone with every key matched
    for path, prefix in ((last, 'backbone.'),
                         (osp.join(work, 'iter_2_backbone.pth'), None)):
        backbone = MODELS.build(seg_backbone_cfg(path, prefix))
        assert set(backbone.state_dict()) == bb_keys
        backbone.init_weights()
        for k, v in backbone.state_dict().items():
            assert torch.equal(v, full[f'backbone.{k}']), k

    # segmentation fine-tune from the pretrained backbone: one step
    seg = MODELS.build(ConfigDict(
        type='BinaryEncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor', size=(32, 32)),
        backbone=seg_backbone_cfg(last, 'backbone.'),
        decode_head=dict(
            type='BinaryFCNHead', preset='react', in_channels=32, in_index=1,
            channels=8, num_convs=1, concat_input=False, num_classes=3,
            norm_cfg=dict(type='BN'),
            loss_decode=dict(type='CrossEntropyLoss'))))
    seg.init_weights()
    assert torch.equal(seg.backbone.patch_embed.proj.weight,
                       full['backbone.patch_embed.proj.weight'])
    sample = SegDataSample()
    sample.gt_sem_seg = PixelData(data=torch.randint(0, 3, (1, 32, 32)))
    sample.set_metainfo(dict(img_shape=(32, 32), ori_shape=(32, 32)))
    losses = seg.loss(torch.randn(2, 3, 32, 32), [sample, sample.clone()])
    seg.parse_losses(losses)[0].backward()
    assert seg.backbone.patch_embed.proj.weight.grad is not None


def test_teacher_training_then_kd_and_deit_stage1(cls_folder, tmp_path):
    # an FP teacher trained by the script itself (CE), then used for KD
    teacher_dir = str(tmp_path / 'teacher')
    pretrain([
        cls_folder, '--model', 'vit_tiny_patch16_224', '--model-kwargs',
        json.dumps(TEACHER_KW), '--img-size', '32', '--batch-size', '3',
        '--epochs', '1', '--num-workers', '0', '--work-dir', teacher_dir,
        '--no-progress'
    ])
    assert osp.isfile(osp.join(teacher_dir, 'epoch_1.pth'))
    assert not osp.exists(osp.join(teacher_dir, 'epoch_1_backbone.pth'))

    # a binary DeiT student, stage 1 of two-step training (FP weights)
    work = str(tmp_path / 'deit')
    common = [
        cls_folder, '--model', 'didb_deit_tiny_patch16_224',
        '--model-kwargs', json.dumps(DEIT_KW), '--img-size', '32',
        '--batch-size', '3', '--num-workers', '0', '--work-dir', work,
        '--teacher', 'vit_tiny_patch16_224', '--teacher-kwargs',
        json.dumps(TEACHER_KW), '--no-progress'
    ]
    last = pretrain(common + [
        '--teacher-checkpoint', osp.join(teacher_dir, 'latest.pth'),
        '--max-iters', '2', '--fp-weights', '--kd-alpha', '0.5'
    ])
    steps = [json.loads(line) for line in open(osp.join(work, 'log.jsonl'))]
    steps = [r for r in steps if 'loss' in r]
    assert len(steps) == 2 and all('kd' in r and 'ce' in r for r in steps)
    meta = torch.load(last, weights_only=False)['meta']
    assert meta['fp_weights'] is True
    # stage 2 (fully binary) starts from the stage-1 weights
    stage2 = pretrain(common + [
        '--teacher-checkpoint', osp.join(teacher_dir, 'latest.pth'),
        '--max-iters', '1', '--init-checkpoint', last,
        '--work-dir', str(tmp_path / 'deit2')
    ])
    meta2 = torch.load(stage2, weights_only=False)['meta']
    assert meta2['fp_weights'] is False

    # loads into the segmentation DIDBViT at another input size (position
    # embedding and Token RPReLU maps resized), every key matched
    backbone = MODELS.build(dict(
        type='DIDBViT', arch='deit-tiny', embed_dims=32, num_layers=2,
        num_heads=2, img_size=64, patch_size=8, out_indices=(0, 1),
        init_cfg=dict(type='Pretrained', checkpoint=last,
                      prefix='backbone.')))
    backbone.init_weights()
    full = torch.load(last, weights_only=False)['state_dict']
    assert {f'backbone.{k}' for k in backbone.state_dict()} <= set(full)
    assert torch.equal(backbone.layers[1].attn.v.linear.weight,
                       full['backbone.layers.1.attn.v.linear.weight'])
    assert binarization_state(backbone)['weights'] is True

    # a teacher checkpoint that does not fit the teacher is an error
    with pytest.raises(SystemExit, match='does not match'):
        pretrain(common + ['--teacher-checkpoint', last, '--max-iters', '1'])
