"""BinaryEncoderDecoder (GRS, binarize) and DistillEncoderDecoder (KD)."""
import math
import warnings

import mmseg_didb  # noqa: F401  (first: installs the mmcv-lite shims)
import pytest
import torch
from mmengine.config import ConfigDict
from mmengine.logging import MessageHub
from mmengine.optim import OptimWrapper
from mmengine.registry import init_default_scope
from mmengine.runner.checkpoint import get_state_dict
from mmengine.structures import PixelData
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

from mmseg_didb.binary import binarization_state, grs_loss
from mmseg_didb.models.losses import PixelKDLoss, pixel_kd_loss
from mmseg_didb.models.segmentors import (BinaryEncoderDecoder,
                                          DistillEncoderDecoder)
from mmseg_didb.models.utils import CheckpointMismatchError

torch.set_num_threads(1)
init_default_scope('mmseg')

NUM_CLASSES = 4
SIZE = 32


def preprocessor(**kwargs):
    cfg = dict(
        type='SegDataPreProcessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        size=(SIZE, SIZE))
    cfg.update(kwargs)
    return cfg


def swin(preset):
    return dict(
        type='DIDBSwin',
        preset=preset,
        embed_dims=16,
        depths=(1, 1),
        num_heads=(1, 2),
        window_size=4,
        out_indices=(0, 1),
        pretrain_img_size=SIZE,
        drop_path_rate=0.)


def fcn_head(num_classes=NUM_CLASSES):
    return dict(
        type='FCNHead',
        in_channels=32,
        in_index=1,
        channels=16,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.,
        num_classes=num_classes,
        norm_cfg=dict(type='BN'),
        loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0))


def teacher_cfg(**kwargs):
    cfg = dict(
        type='EncoderDecoder',
        data_preprocessor=preprocessor(),
        backbone=swin('fp'),
        decode_head=fcn_head())
    cfg.update(kwargs)
    return cfg


def student_cfg(**kwargs):
    cfg = dict(
        type='DistillEncoderDecoder',
        data_preprocessor=preprocessor(),
        backbone=swin('didb'),
        decode_head=fcn_head(),
        test_cfg=dict(mode='whole'),
        teacher_config=teacher_cfg(),
        allow_random_teacher=True,
        distill=dict(temperature=2.0, weight=0.5))
    cfg.update(kwargs)
    return cfg


def build(cfg):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)
        model = MODELS.build(ConfigDict(cfg))
    model.init_weights()
    return model


def batch(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, 3, SIZE, SIZE, generator=g)
    samples = []
    for _ in range(n):
        s = SegDataSample()
        s.gt_sem_seg = PixelData(
            data=torch.randint(0, NUM_CLASSES, (1, SIZE, SIZE), generator=g))
        s.set_metainfo(
            dict(img_shape=(SIZE, SIZE), ori_shape=(SIZE, SIZE),
                 pad_shape=(SIZE, SIZE)))
        samples.append(s)
    return inputs, samples


# ---------------------------------------------------------------- KD loss
def test_kd_loss_matches_hand_computation():
    # one image, 2 classes, 1 x 2 pixels
    s = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]]]])
    t = torch.tensor([[[[3.0, 1.0]], [[1.0, 1.0]]]])
    T = 2.0

    def softmax(a, b):
        ea, eb = math.exp(a), math.exp(b)
        return ea / (ea + eb), eb / (ea + eb)

    kl, ce = [], []
    for px in range(2):
        ps = softmax(s[0, 0, 0, px] / T, s[0, 1, 0, px] / T)
        pt = softmax(t[0, 0, 0, px] / T, t[0, 1, 0, px] / T)
        kl.append(T * T * sum(q * math.log(q / p) for q, p in zip(pt, ps)))
        ce.append(-T * T * sum(q * math.log(p) for q, p in zip(pt, ps)))
    assert pixel_kd_loss(s, t, T, 'kl').item() == pytest.approx(
        sum(kl) / 2, rel=1e-5)
    assert pixel_kd_loss(s, t, T, 'soft_ce').item() == pytest.approx(
        sum(ce) / 2, rel=1e-5)
    # the mask keeps pixel 1 only
    mask = torch.tensor([[[False, True]]])
    assert pixel_kd_loss(s, t, T, 'kl', mask).item() == pytest.approx(
        kl[1], rel=1e-5)
    # module form: weight x loss
    assert PixelKDLoss(T, 0.5)(s, t).item() == pytest.approx(
        sum(kl) / 4, rel=1e-5)
    # classification logits (B, C)
    assert pixel_kd_loss(s[..., 0, 0], t[..., 0, 0], T).item() == \
        pytest.approx(kl[0], rel=1e-5)


def test_kd_loss_properties_and_errors():
    s = torch.randn(2, 5, 4, 4)
    assert pixel_kd_loss(s, s.clone()).abs().item() < 1e-6
    # a teacher at another resolution is resized to the student's
    t = torch.randn(2, 5, 8, 8)
    t_small = torch.nn.functional.interpolate(
        t, size=(4, 4), mode='bilinear', align_corners=False)
    assert torch.allclose(pixel_kd_loss(s, t), pixel_kd_loss(s, t_small))
    with pytest.raises(ValueError, match='num_classes'):
        pixel_kd_loss(s, torch.randn(2, 6, 4, 4))
    with pytest.raises(ValueError, match='mode'):
        pixel_kd_loss(s, s, mode='mse')
    with pytest.raises(ValueError, match='temperature'):
        pixel_kd_loss(s, s, temperature=0)


# ------------------------------------------------------- distillation model
def test_distill_loss_terms_and_value():
    model = build(student_cfg())
    inputs, samples = batch()
    losses = model.loss(inputs, samples)
    assert {'decode.loss_ce', 'decode.acc_seg', 'loss_kd'} <= set(losses)
    with torch.no_grad():
        s_logits = model._forward(inputs)
        t_logits = model.teacher._forward(inputs)
    expected = 0.5 * pixel_kd_loss(s_logits, t_logits, 2.0)
    assert losses['loss_kd'].item() == pytest.approx(expected.item(),
                                                     rel=1e-5)
    assert losses['loss_kd'].item() > 0
    # the logged total includes it
    total, log_vars = model.parse_losses(losses)
    assert total.item() == pytest.approx(
        (losses['decode.loss_ce'] + losses['loss_kd']).item(), rel=1e-5)
    assert 'loss_kd' in log_vars


def test_teacher_frozen_outside_state_dict_and_optimizer(tmp_path):
    model = build(student_cfg())
    teacher = model.teacher
    keys = set(model.state_dict()) | set(get_state_dict(model))
    assert keys and not any(k.startswith('teacher') or '_teacher' in k
                            for k in keys)
    student_ids = {id(p) for p in model.parameters()}
    assert all(id(p) not in student_ids for p in teacher.parameters())
    assert all(not p.requires_grad for p in teacher.parameters())
    assert teacher not in list(model.modules())

    model.train()
    assert model.training and not teacher.training
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in model.state_dict().items()}
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.1))
    inputs, samples = batch()
    log_vars = model.train_step(
        dict(inputs=list(inputs * 50 + 120), data_samples=samples), optim)
    assert 'loss_kd' in log_vars
    after = teacher.state_dict()
    # BN running statistics and weights of the teacher are untouched
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(p.grad is None for p in teacher.parameters())
    changed = [k for k, v in model.state_dict().items()
               if v.dtype.is_floating_point
               and not torch.equal(v, student_before[k])]
    assert changed, 'the student must have been updated'

    path = tmp_path / 'student.pth'
    torch.save({'state_dict': get_state_dict(model)}, path)
    saved = torch.load(path, weights_only=False)['state_dict']
    assert set(saved) == set(model.state_dict())


def test_teacher_checkpoint_loads_and_input_renormalisation(tmp_path):
    fp = build(teacher_cfg())
    path = tmp_path / 'teacher.pth'
    torch.save({'state_dict': fp.state_dict(), 'meta': {}}, path)
    model = build(student_cfg(teacher_checkpoint=str(path),
                              allow_random_teacher=False))
    for k, v in fp.state_dict().items():
        assert torch.equal(model.teacher.state_dict()[k], v)
    inputs, _ = batch()
    with torch.no_grad():
        assert torch.allclose(model.teacher_logits(inputs),
                              fp.eval()._forward(inputs))

    # a teacher normalising differently gets the batch re-normalised
    other = build(student_cfg(teacher_config=teacher_cfg(
        data_preprocessor=preprocessor(mean=[0., 0., 0.], std=[255.] * 3,
                                       bgr_to_rgb=False))))
    raw = torch.rand(1, 3, SIZE, SIZE) * 255
    s_in = (raw.flip(1) - other.data_preprocessor.mean) / \
        other.data_preprocessor.std
    assert torch.allclose(other._teacher_inputs(s_in), raw / 255, atol=1e-5)


def test_teacher_errors(tmp_path):
    with pytest.raises(ValueError, match='teacher_checkpoint'):
        MODELS.build(student_cfg(allow_random_teacher=False))
    with pytest.raises(FileNotFoundError,
                       match='does not exist.*teacher_checkpoint must be'):
        MODELS.build(student_cfg(
            teacher_checkpoint=str(tmp_path / 'no.pth'))).teacher
    with pytest.raises(ValueError, match='classes'):
        build(student_cfg(teacher_config=teacher_cfg(
            decode_head=fcn_head(NUM_CLASSES + 1)))).teacher
    with pytest.raises(ValueError, match='distill keys'):
        build(student_cfg(distill=dict(temp=2.0)))
    bad = tmp_path / 'bad.pth'
    state = build(teacher_cfg()).state_dict()
    state.pop('decode_head.conv_seg.bias')
    torch.save({'state_dict': state}, bad)
    with pytest.raises(CheckpointMismatchError,
                       match='1 missing keys.*conv_seg.bias.*teacher_config'):
        build(student_cfg(teacher_checkpoint=str(bad))).teacher
    with pytest.warns(UserWarning, match='RANDOM'):
        MODELS.build(student_cfg()).teacher


def test_predict_identical_to_encoder_decoder(tmp_path):
    # inference never builds the teacher: its files need not exist
    model = build(student_cfg(teacher_checkpoint=str(tmp_path / 'no.pth')))
    plain_cfg = dict(student_cfg(), type='EncoderDecoder')
    for key in ('teacher_config', 'allow_random_teacher', 'distill'):
        plain_cfg.pop(key)
    plain = MODELS.build(ConfigDict(plain_cfg))
    plain.load_state_dict(model.state_dict())
    model.eval()
    plain.eval()
    inputs, samples = batch(seed=3)
    with torch.no_grad():
        out = model.predict(inputs, [s.clone() for s in samples])
        ref = plain.predict(inputs, [s.clone() for s in samples])
        assert torch.equal(model._forward(inputs), plain._forward(inputs))
    for a, b in zip(out, ref):
        assert torch.equal(a.seg_logits.data, b.seg_logits.data)
        assert torch.equal(a.pred_sem_seg.data, b.pred_sem_seg.data)
    assert not model._teacher_holder


# ---------------------------------------------------------- GRS and switch
def test_grs_loss_logged_with_ramp():
    cfg = dict(
        type='BinaryEncoderDecoder',
        data_preprocessor=preprocessor(),
        backbone=swin('binaryvit'),
        decode_head=fcn_head(),
        grs=dict(weight=2.0, warmup_iters=10))
    model = build(cfg)
    inputs, samples = batch()
    hub = MessageHub.get_current_instance()
    reg = grs_loss(model).item()
    assert reg > 0
    for it, lam in ((0, 0.0), (5, 1.0), (10, 2.0), (50, 2.0)):
        hub.update_info('iter', it)
        losses = model.loss(inputs, samples)
        assert losses['loss_grs'].item() == pytest.approx(lam * reg, rel=1e-5)
        assert losses['grs_reg'].item() == pytest.approx(reg, rel=1e-5)
        total, log_vars = model.parse_losses(losses)
        assert {'loss_grs', 'grs_reg'} <= set(log_vars)
        # grs_reg is logged, not optimised
        assert total.item() == pytest.approx(
            (losses['decode.loss_ce'] + losses['loss_grs']).item(), rel=1e-5)
    # it has a gradient into the latent weights
    hub.update_info('iter', 10)
    model.loss(inputs, samples)['loss_grs'].backward()
    w = model.backbone.layers[0].blocks[0].attn.v.linear.weight
    assert w.grad is not None and w.grad.abs().sum() > 0
    hub.update_info('iter', 0)


def test_binarize_argument_and_errors():
    cfg = dict(
        type='BinaryEncoderDecoder',
        data_preprocessor=preprocessor(),
        backbone=swin('didb'),
        decode_head=fcn_head(),
        binarize=dict(weights=False))
    model = build(cfg)
    assert binarization_state(model) == dict(
        weights=False, activations=True, attention=True)
    assert binarization_state(build(dict(cfg, binarize=None))) == dict(
        weights=True, activations=True, attention=True)
    with pytest.raises(ValueError, match='binarize keys'):
        MODELS.build(dict(cfg, binarize=dict(weight=False)))
    with pytest.raises(ValueError, match='grs'):
        MODELS.build(dict(cfg, grs=dict(warmup_iters=3)))
    assert isinstance(model, BinaryEncoderDecoder)
    assert issubclass(DistillEncoderDecoder, BinaryEncoderDecoder)
