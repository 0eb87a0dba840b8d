"""The backbones in mmpretrain and mmdet: registries, losses, distillation,
the toolboxes' own train tools, and strict loading of a classification
checkpoint into the segmentation backbone."""
import json
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config

import mmseg_didb  # noqa: F401
from mmseg_didb.models.losses import pixel_kd_loss

mmpretrain = pytest.importorskip('mmpretrain')
mmdet = pytest.importorskip('mmdet')

from mmpretrain.registry import MODELS as CLS_MODELS  # noqa: E402
from mmpretrain.structures import DataSample  # noqa: E402

import mmseg_didb.integrations.mmdet  # noqa: E402,F401
import mmseg_didb.integrations.mmpretrain  # noqa: E402,F401
from mmdet.registry import MODELS as DET_MODELS  # noqa: E402
from mmdet.structures import DetDataSample  # noqa: E402
from mmengine.structures import InstanceData  # noqa: E402

@pytest.fixture(autouse=True)
def mmpretrain_scope():
    """Other tests leave mmseg as the default scope; these build in
    mmpretrain's (and mmdet's) registries."""
    from mmengine.registry import DefaultScope
    with DefaultScope.overwrite_default_scope('mmpretrain'):
        yield


TINY_SWIN = dict(type='mmseg.DIDBSwin', embed_dims=16, depths=(1, 1, 1),
                 num_heads=(1, 2, 4), window_size=4, pretrain_img_size=32,
                 drop_path_rate=0.0, out_indices=(0, 1, 2))
TINY_VIT = dict(type='mmseg.DIDBViT',
                arch=dict(embed_dims=32, num_layers=2, num_heads=2),
                img_size=32, patch_size=8, final_norm=True,
                out_indices=(-1, ))


def classifier(backbone, preset='didb', in_channels=64, **kwargs):
    return dict(
        type='BinaryImageClassifier',
        backbone=dict(backbone, preset=preset),
        neck=dict(type='GlobalAveragePooling'),
        head=dict(type='LinearClsHead', num_classes=4,
                  in_channels=in_channels, topk=(1, )),
        **kwargs)


def cls_batch(n=2, size=32):
    torch.manual_seed(0)
    samples = [DataSample().set_gt_label(i % 4) for i in range(n)]
    return torch.randn(n, 3, size, size), samples


def test_import_keeps_the_toolboxes_off_the_plugin_path():
    # the plugin imports without them (mmseg itself imports mmdet, and
    # with it mmpretrain, when they are installed: its Mask2Former heads)
    code = ("import sys; sys.modules['mmdet'] = None; "
            "sys.modules['mmpretrain'] = None; import mmseg_didb; "
            "print(sorted(m for m in sys.modules if m.startswith("
            "'mmseg_didb.integrations')))")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                         text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == '[]'


@pytest.mark.parametrize('cfg', [TINY_SWIN, TINY_VIT], ids=['swin', 'vit'])
def test_backbones_return_tuples(cfg):
    from mmseg.registry import MODELS
    backbone = MODELS.build(dict(cfg, preset='didb'))
    outs = backbone(torch.randn(1, 3, 32, 32))
    assert isinstance(outs, tuple)


@pytest.mark.parametrize('backbone,channels', [(TINY_SWIN, 64),
                                               (TINY_VIT, 32)],
                         ids=['swin', 'vit'])
def test_mmpretrain_classifier_loss_and_gradients(backbone, channels):
    # plain mmpretrain ImageClassifier (the neck needs a tuple) ...
    plain = CLS_MODELS.build(dict(
        classifier(backbone, in_channels=channels),
        type='ImageClassifier'))
    assert plain(torch.randn(2, 3, 32, 32), mode='tensor').shape == (2, 4)
    # ... and the binary one, built from a config through custom_imports
    cfg = Config(dict(
        custom_imports=dict(imports=['mmseg_didb.integrations.mmpretrain']),
        model=classifier(backbone, in_channels=channels)))
    model = CLS_MODELS.build(cfg.model)
    inputs, samples = cls_batch()
    losses = model(inputs, samples, mode='loss')
    assert set(losses) == {'loss'} and torch.isfinite(losses['loss'])
    losses['loss'].backward()
    grads = [p.grad for n, p in model.backbone.named_parameters()
             if p.requires_grad]
    assert sum(g is not None and bool(g.abs().sum() > 0)
               for g in grads) > len(grads) // 2


def test_classifier_grs_follows_the_preset():
    model = CLS_MODELS.build(classifier(TINY_SWIN, preset='binaryvit'))
    inputs, samples = cls_batch()
    losses = model(inputs, samples, mode='loss')
    assert losses['loss_grs'] > 0 and 'grs_reg' in losses
    assert 'loss_grs' not in CLS_MODELS.build(classifier(TINY_SWIN))(
        inputs, samples, mode='loss')


def test_classifier_binarize_switch():
    from mmseg_didb.binary.layers import BinaryLinear
    model = CLS_MODELS.build(classifier(TINY_SWIN,
                                        binarize=dict(weights=False)))
    layers = [m for m in model.modules() if isinstance(m, BinaryLinear)]
    assert layers and not any(m.weight_quantizer.enabled for m in layers)


def test_classifier_distillation_from_an_fp_teacher(tmp_path):
    teacher_cfg = classifier(TINY_SWIN, preset='fp')
    teacher = CLS_MODELS.build(teacher_cfg)
    torch.save({'state_dict': teacher.state_dict()}, tmp_path / 't.pth')
    inputs, samples = cls_batch()
    with torch.no_grad():
        target = teacher.eval()(inputs, mode='tensor')
    for alpha in (1.0, 0.25):
        model = CLS_MODELS.build(classifier(TINY_SWIN, distill=dict(
            teacher=teacher_cfg, checkpoint=str(tmp_path / 't.pth'),
            temperature=2.0, alpha=alpha)))
        losses = model(inputs, samples, mode='loss')
        logits = model.head(model.extract_feat(inputs))
        expected = alpha * pixel_kd_loss(logits, target, 2.0,
                                         mode='soft_ce')
        torch.testing.assert_close(losses['loss_kd'], expected)
        if alpha == 1.0:
            assert set(losses) == {'loss_kd'}
        else:
            ce = torch.nn.functional.cross_entropy(
                logits, torch.tensor([s.gt_label.item() for s in samples]))
            torch.testing.assert_close(losses['loss'], 0.75 * ce)
    # the teacher is not part of the student's checkpoint
    assert not any(k.startswith('teacher') or '_teacher' in k
                   for k in model.state_dict())


@pytest.mark.parametrize('distill,match', [
    (dict(teacher=dict(type='ImageClassifier')), 'checkpoint'),
    (dict(teacher='x.py', checkpoint='x.pth', beta=1), 'Unknown distill'),
    (dict(teacher='x.py', checkpoint='x.pth', alpha=2), 'alpha'),
])
def test_classifier_distill_errors(distill, match):
    with pytest.raises(ValueError, match=match):
        CLS_MODELS.build(classifier(TINY_SWIN, distill=distill))


def test_mmdet_retinanet_loss_with_the_binary_backbone():
    from mmengine.registry import DefaultScope
    cfg = Config.fromfile('configs/det/tiny_texture_det.py')
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = DET_MODELS.build(cfg.model)
    torch.manual_seed(0)
    sample = DetDataSample(metainfo=dict(img_shape=(64, 64),
                                         pad_shape=(64, 64),
                                         batch_input_shape=(64, 64)))
    sample.gt_instances = InstanceData(
        bboxes=torch.tensor([[4., 4., 40., 30.], [20., 10., 60., 60.]]),
        labels=torch.tensor([1, 5]))
    losses = model.loss(torch.randn(2, 3, 64, 64), [sample, sample])
    total = sum(sum(v) if isinstance(v, list) else v
                for k, v in losses.items() if 'loss' in k)
    assert torch.isfinite(total)
    total.backward()
    assert model.backbone.patch_embed.proj.weight.grad.abs().sum() > 0


def _reference_nms(boxes, scores, thr):
    """Greedy NMS, written out: the best box, drop its overlaps, repeat."""
    order = scores.argsort(descending=True).tolist()
    keep = []
    while order:
        i = order.pop(0)
        keep.append(i)
        rest = []
        for j in order:
            lt = torch.maximum(boxes[i, :2], boxes[j, :2])
            rb = torch.minimum(boxes[i, 2:], boxes[j, 2:])
            inter = (rb - lt).clamp(min=0).prod()
            area = lambda b: (b[2:] - b[:2]).prod()  # noqa: E731
            iou = inter / (area(boxes[i]) + area(boxes[j]) - inter)
            if iou <= thr:
                rest.append(j)
        order = rest
    return keep


def test_nms_runs_without_compiled_mmcv():
    from mmcv.ops import batched_nms, nms
    torch.manual_seed(0)
    xy = torch.rand(60, 2) * 50
    boxes = torch.cat([xy, xy + 5 + torch.rand(60, 2) * 20], 1)
    scores = torch.rand(60)
    dets, keep = nms(boxes, scores, 0.4)
    assert keep.tolist() == _reference_nms(boxes, scores, 0.4)
    torch.testing.assert_close(dets[:, 4], scores[keep])
    idxs = torch.randint(0, 3, (60, ))
    dets, keep = batched_nms(boxes, scores, idxs,
                             dict(type='nms', iou_threshold=0.4))
    expected = sorted((i for c in range(3) for i in _reference_nms(
        boxes[idxs == c], scores[idxs == c], 0.4) for i in
        [torch.nonzero(idxs == c)[i].item()]),
        key=lambda i: -scores[i].item())
    assert keep.tolist() == expected


def test_ops_without_fallback_name_the_op():
    from mmcv.ops import roi_align

    from mmseg_didb.compat import MissingCompiledOpError
    with pytest.raises(MissingCompiledOpError, match='roi_align'):
        roi_align(torch.rand(1, 1, 8, 8), torch.tensor([[0., 0, 0, 4, 4]]),
                  (2, 2))


def test_tool_picks_the_toolbox_of_the_config():
    from mmseg_didb.engine.mmseg_tools import config_toolbox
    assert config_toolbox('configs/pretrain/tiny_texture_cls.py') == \
        'mmpretrain'
    assert config_toolbox('configs/det/tiny_texture_det.py') == 'mmdet'
    assert config_toolbox('configs/demo_texture.py') == 'mmseg'
    assert config_toolbox('missing.py') == 'mmseg'


def _data_options(root, keys):
    return [f'{k}.dataset.data_root={root}' for k in keys]


@pytest.fixture(scope='module')
def cls_pretrain(tmp_path_factory, run_tool, repo_root):
    """One epoch of configs/pretrain/tiny_texture_cls.py through
    mmpretrain's train tool on a small ImageNet-format folder."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        'make_cls_folder', repo_root / 'tools' / 'make_cls_folder.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    data = tmp_path_factory.mktemp('cls_folder')
    module.make_folder(str(data), size=64, train_per_class=8,
                       val_per_class=2)
    work = tmp_path_factory.mktemp('cls_run')
    proc = run_tool([
        'tools/train.py', 'configs/pretrain/tiny_texture_cls.py',
        '--work-dir', work, '--cfg-options', 'train_cfg.max_epochs=1',
        'train_dataloader.batch_size=16', *_data_options(
            data, ['train_dataloader', 'val_dataloader',
                   'test_dataloader'])])
    return work / 'epoch_1.pth', proc.stdout


def test_mmpretrain_train_tool_then_mmseg_finetune(cls_pretrain, run_tool,
                                                   texture_data, tmp_path):
    ckpt, log = cls_pretrain
    assert 'accuracy/top1' in log and ckpt.is_file()
    # the classifier's backbone loads into the demo segmentor strictly
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    cfg = Config.fromfile(
        'configs/recipes/demo_texture_mmpretrain_finetune.py')
    cfg.model.backbone.init_cfg.checkpoint = str(ckpt)
    seg = MODELS.build(cfg.model)
    seg.init_weights()
    saved = torch.load(ckpt, weights_only=True)['state_dict']
    backbone = {k[len('backbone.'):]: v for k, v in saved.items()
                if k.startswith('backbone.')}
    own = seg.backbone.state_dict()
    assert set(own) == set(backbone)
    assert all(torch.equal(own[k], v) for k, v in backbone.items())
    # and the fine-tune runs through mmseg's train tool
    proc = run_tool([
        'tools/train.py',
        'configs/recipes/demo_texture_mmpretrain_finetune.py',
        '--work-dir', tmp_path, '--cfg-options', 'train_cfg.max_iters=2',
        'train_cfg.val_interval=2', 'train_dataloader.batch_size=2',
        f'model.backbone.init_cfg.checkpoint={ckpt}', *_data_options(
            texture_data, ['train_dataloader', 'val_dataloader',
                           'test_dataloader'])])
    assert 'mIoU' in proc.stdout


def test_mmdet_train_tool_two_iterations(run_tool, tmp_path):
    from mmseg_didb.datasets.texture_coco import write_coco_annotations
    from mmseg_didb.datasets.texture_maker import MosaicSpec, build_dataset
    data = tmp_path / 'det'
    build_dataset(str(data), MosaicSpec(seed=0, size=64, num_train=4,
                                        num_val=2), verbose=False)
    train_json, val_json = write_coco_annotations(str(data))
    ann = json.load(open(train_json))
    assert ann['annotations'] and {a['category_id'] for a in
                                   ann['annotations']} <= set(range(1, 9))
    proc = run_tool([
        'tools/train.py', 'configs/det/tiny_texture_det.py', '--work-dir',
        tmp_path / 'work', '--cfg-options', 'train_cfg.max_iters=2',
        'train_cfg.val_interval=2', 'train_dataloader.batch_size=2',
        f'val_evaluator.ann_file={val_json}',
        f'test_evaluator.ann_file={val_json}', *_data_options(
            str(data) + '/', ['train_dataloader', 'val_dataloader',
                              'test_dataloader'])])
    assert 'Iter(train) [2/2]' in proc.stdout and 'loss_bbox' in proc.stdout
    assert 'Evaluating bbox' in proc.stdout


def test_coco_annotations_follow_the_regions(texture_data):
    from mmseg_didb.datasets.texture_coco import coco_annotations
    from mmseg_didb.datasets.texture_maker import read_meta
    import cv2
    import numpy as np
    meta = read_meta(str(texture_data))
    ann = coco_annotations(meta, 'training', min_side=1)
    label = cv2.imread(str(texture_data / meta['images']['training'][0]
                           ['ann']), cv2.IMREAD_UNCHANGED)
    for a in (a for a in ann['annotations'] if a['image_id'] == 0):
        x, y, w, h = map(int, a['bbox'])
        box = label[y:y + h, x:x + w]
        # the region's class touches all four sides of its box
        hit = box == a['category_id']
        assert hit[0].any() and hit[-1].any()
        assert hit[:, 0].any() and hit[:, -1].any()
    with pytest.raises(ValueError, match='split'):
        coco_annotations(meta, 'test')
    assert np.unique([c['id'] for c in ann['categories']]).size == 8


def test_full_pretrain_configs_resolve_their_teacher():
    from mmseg_didb.models.segmentors.distill_encoder_decoder import \
        load_teacher_config
    for path in ('configs/pretrain/didb_swin_t_in1k.py',
                 'configs/pretrain/didb_deit_s_in1k.py'):
        cfg = Config.fromfile(path)
        assert cfg.default_scope == 'mmpretrain'
        assert cfg.optim_wrapper.optimizer.lr == 5e-4
        assert cfg.auto_scale_lr.base_batch_size == 512
        teacher = load_teacher_config(cfg.model.distill.teacher)
        assert teacher.backbone.arch == 'deit-small'
