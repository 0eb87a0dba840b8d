"""DIDBSwin: timm equivalence, presets, shapes, gradients, mmseg integration."""
import time

import pytest
import torch

import mmseg_didb  # noqa: F401
from mmseg_didb.binary.presets import PRESETS
from mmseg_didb.binary.quantizers import (ASMSign, BWNWeight, ElasticSign,
                                          ReActWeight, RSign, SignSTE,
                                          SignWeight)
from mmseg_didb.binary.rprelu import ChannelPReLU, RPReLU, TokenRPReLU
from mmseg_didb.binary.shortcuts import MergeShortcut
from mmseg_didb.models.backbones.didb_swin import (DIDBSwin,
                                                   relative_position_index,
                                                   window_and_shift)

torch.set_num_threads(1)
ALL_PRESETS = sorted(PRESETS)
TINY = dict(embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4),
            window_size=4, drop_path_rate=0., pretrain_img_size=64)


def tiny(preset, **kw):
    model = DIDBSwin(preset=preset, **{**TINY, **kw})
    model.init_weights()
    return model


def test_fp_swin_tiny_equals_timm_forward_intermediates():
    """The init path: timm swin_tiny (random weights) converted and loaded
    gives timm's stage features at 448 (every stage larger than the window)."""
    import timm
    torch.manual_seed(0)
    ref = timm.create_model('swin_tiny_patch4_window7_224', pretrained=False,
                            img_size=448).eval()
    model = DIDBSwin(arch='tiny', preset='fp', drop_path_rate=0.)
    model.load_state_dict(ref.state_dict())  # strict: every key matched
    model.eval()
    x = torch.randn(1, 3, 448, 448)
    with torch.no_grad():
        want = ref.forward_intermediates(x, intermediates_only=True)
        outs = model(x)
    norms = [model.norm0, model.norm1, model.norm2, ref.norm]
    for i, (o, w, n) in enumerate(zip(outs, want, norms)):
        w = n(w.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        assert o.shape == w.shape == (1, 96 * 2**i, 112 // 2**i, 112 // 2**i)
        torch.testing.assert_close(o, w, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('preset', ALL_PRESETS)
def test_output_shapes_any_input_size(preset):
    model = tiny(preset).eval()
    for h, w in ((256, 256), (255, 255), (112, 137)):
        with torch.no_grad():
            outs = model(torch.randn(1, 3, h, w))
        H, W = -(-h // 4), -(-w // 4)
        for i, o in enumerate(outs):
            assert o.shape == (1, 16 * 2**i, H, W), (preset, h, w, i)
            assert torch.isfinite(o).all()
            H, W = -(-H // 2), -(-W // 2)


@pytest.mark.parametrize('preset', ALL_PRESETS)
def test_gradients_reach_every_trainable_parameter(preset):
    torch.manual_seed(0)
    model = tiny(preset).train()
    outs = model(torch.randn(2, 3, 64, 64))
    sum((o * torch.randn_like(o)).sum() for o in outs).backward()
    dead = [n for n, p in model.named_parameters() if p.requires_grad and (
        p.grad is None or not p.grad.abs().max() > 0)]
    assert not dead, dead


def _types(module, cls):
    return [n for n, m in module.named_modules() if isinstance(m, cls)]


def test_preset_switches_build_the_documented_modules():
    didb = DIDBSwin(preset='didb', **TINY)
    attn = didb.layers[0].blocks[0].attn
    assert {'q_low', 'k_low', 'q_high', 'k_high'} <= set(
        dict(attn.similarity.named_children()))
    assert {'v', 'proj'} <= set(dict(attn.named_children()))
    assert attn.similarity.mix.shape == (1, 2)
    assert attn.aggregation.shortcut_scale is not None
    assert attn.aggregation.local_scale is not None
    assert isinstance(attn.v.act, TokenRPReLU)
    assert isinstance(attn.v.linear.input_quantizer, RSign)
    assert isinstance(attn.v.linear.weight_quantizer, ReActWeight)
    merge = didb.layers[1].downsample.reduction
    assert isinstance(merge.shortcut, MergeShortcut)
    # {0, a} binarizer starts at 1/N for the 4x4 windows
    assert torch.allclose(attn.attn_quant.alpha, torch.tensor([1 / 16]))

    off = DIDBSwin(preset='didb', preset_overrides=dict(
        hfsc=False, diba_local=False, token_rprelu=False), **TINY)
    attn = off.layers[0].blocks[0].attn
    assert hasattr(attn.similarity, 'q')
    assert not hasattr(attn.similarity, 'q_low')
    assert attn.aggregation.shortcut_scale is not None
    assert attn.aggregation.local_scale is None
    assert not _types(off, TokenRPReLU) and _types(off, RPReLU)
    # overrides may also be given as keyword arguments
    kw = DIDBSwin(preset='didb', diba_shortcut=False, **TINY)
    assert kw.layers[0].blocks[0].attn.aggregation.shortcut_scale is None

    fp = DIDBSwin(preset='fp', **TINY)
    assert not _types(fp, (RSign, SignSTE, ElasticSign, ASMSign, RPReLU,
                           ChannelPReLU))
    assert fp.layers[0].blocks[0].attn.v.norm is None
    assert isinstance(DIDBSwin(preset='bnn', **TINY).layers[0].blocks[0]
                      .mlp.fc1.act, ChannelPReLU)
    assert isinstance(DIDBSwin(preset='bnn', **TINY).layers[0].blocks[0]
                      .mlp.fc1.linear.weight_quantizer, SignWeight)
    bit = DIDBSwin(preset='bit', **TINY).layers[0].blocks[0].mlp.fc1.linear
    assert isinstance(bit.weight_quantizer, BWNWeight)
    assert isinstance(bit.input_quantizer, ElasticSign)
    bvit = DIDBSwin(preset='binaryvit', **TINY)
    assert isinstance(bvit.layers[0].blocks[0].mlp.fc2.linear.input_quantizer,
                      ASMSign) and bvit.preset.grs
    with pytest.raises(ValueError, match='valid presets'):
        DIDBSwin(preset='xnor', **TINY)
    with pytest.raises(ValueError, match='valid keys'):
        DIDBSwin(preset='didb', preset_overrides=dict(hfcs=False), **TINY)
    with pytest.raises(ValueError, match='arch'):
        DIDBSwin(arch='huge')


def test_arch_zoo_and_mmseg_compatible_arguments():
    small = DIDBSwin(arch='small', preset='fp')
    assert [len(s.blocks) for s in small.layers] == [2, 2, 18, 2]
    base = DIDBSwin(arch='base', preset='fp', out_indices=(1, 3))
    assert base.num_features == [128, 256, 512, 1024]
    assert not hasattr(base, 'norm0') and hasattr(base, 'norm3')
    # the backbone dict of mmseg's upernet_swin base config works as is
    DIDBSwin(preset='fp', pretrain_img_size=224, embed_dims=96, patch_size=4,
             window_size=7, mlp_ratio=4, depths=[2, 2, 6, 2],
             num_heads=[3, 6, 12, 24], strides=(4, 2, 2, 2),
             out_indices=(0, 1, 2, 3), qkv_bias=True, qk_scale=None,
             patch_norm=True, drop_rate=0., attn_drop_rate=0.,
             drop_path_rate=0.3, use_abs_pos_embed=False,
             act_cfg=dict(type='GELU'), norm_cfg=dict(type='LN',
                                                      requires_grad=True))
    with pytest.raises(ValueError, match='use_abs_pos_embed'):
        DIDBSwin(preset='fp', use_abs_pos_embed=True)


def test_window_clamping_and_relative_index():
    assert window_and_shift((3, 9), (7, 7)) == ((3, 7), (0, 3))
    assert window_and_shift((7, 7), (7, 7)) == ((7, 7), (0, 0))
    from timm.models.swin_transformer import get_relative_position_index
    assert torch.equal(relative_position_index((7, 7), (7, 7)),
                       get_relative_position_index(7, 7))
    sub = relative_position_index((2, 3), (4, 4))
    full = get_relative_position_index(4, 4).view(4, 4, 4, 4)
    assert torch.equal(sub, full[:2, :3, :2, :3].reshape(6, 6))


def test_with_cp_gives_same_gradients_and_frozen_stages():
    torch.manual_seed(0)
    model = tiny('didb')
    x = torch.randn(1, 3, 64, 64)
    sum(o.sum() for o in model(x)).backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    cp_model = DIDBSwin(preset='didb', with_cp=True, **TINY)
    cp_model.load_state_dict(model.state_dict())
    sum(o.sum() for o in cp_model(x)).backward()
    for n, p in cp_model.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], atol=1e-5, rtol=1e-4)

    frozen = DIDBSwin(preset='didb', frozen_stages=2, **TINY)
    frozen.train()
    trainable = {n for n, p in frozen.named_parameters() if p.requires_grad}
    # mmseg semantics: stage k = its blocks + the patch merging after it
    assert not any(n.startswith(('patch_embed', 'layers.0.', 'layers.1.',
                                 'layers.2.downsample', 'norm0', 'norm1'))
                   for n in trainable)
    assert any(n.startswith('layers.2.blocks') for n in trainable)
    assert any(n.startswith('layers.3.downsample') for n in trainable)
    assert not frozen.layers[1].blocks.training
    assert not frozen.layers[2].downsample.training
    assert frozen.layers[2].blocks.training


def _seg_step(preset, backbone):
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    cfg = dict(
        type='EncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor',
                               mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], size=(64, 64),
                               pad_val=0, seg_pad_val=255),
        backbone=dict(type='DIDBSwin', preset=preset, **backbone),
        decode_head=dict(type='UPerHead', in_channels=[
            backbone.get('embed_dims', 96) * 2**i for i in range(4)],
                         in_index=[0, 1, 2, 3], pool_scales=(1, 2, 3, 6),
                         channels=16, num_classes=4,
                         norm_cfg=dict(type='BN', requires_grad=True),
                         loss_decode=dict(type='CrossEntropyLoss',
                                          loss_weight=1.0)),
        train_cfg=dict(), test_cfg=dict(mode='whole'))
    model = MODELS.build(cfg)
    model.init_weights()
    model.train()
    data = model.data_preprocessor(dict(
        inputs=[torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8)
                for _ in range(2)],
        data_samples=[SegDataSample(gt_sem_seg=PixelData(
            data=torch.randint(0, 4, (1, 64, 64)))) for _ in range(2)]), True)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    loss, _ = model.parse_losses(model(**data, mode='loss'))
    opt.zero_grad()
    loss.backward()
    dead = [n for n, p in model.backbone.named_parameters()
            if p.grad is None or not p.grad.abs().max() > 0]
    opt.step()
    changed = [n for n, p in model.backbone.named_parameters()
               if not torch.equal(p, before[n])]
    return loss, dead, changed, model


@pytest.mark.parametrize('preset', ALL_PRESETS)
def test_swin_t_trains_a_step_in_encoder_decoder_with_uperhead(preset):
    """The real Swin-T arch for every preset; 64x64 input to stay cheap, so
    pretrain_img_size=64 makes the reference grids (Token RPReLU, the 1/N
    start of the {0, a} binarizer) match the maps seen."""
    torch.manual_seed(0)
    loss, dead, changed, model = _seg_step(
        preset, dict(arch='tiny', pretrain_img_size=64))
    assert torch.isfinite(loss)
    assert not dead, dead
    assert 'patch_embed.proj.weight' in changed  # the optimizer step ran
    assert any('layers.3.blocks.1.attn' in n for n in changed)


def test_full_swin_t_didb_forward_512():
    """Full Swin-T with every DIDB component: builds and runs at 512x512."""
    model = DIDBSwin(arch='tiny', preset='didb')
    model.init_weights()
    model.eval()
    params = sum(p.numel() for p in model.parameters())
    binary = sum(m.weight.numel() for m in model.modules()
                 if getattr(m, 'weight_quantizer', None) is not None)
    start = time.time()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 512, 512))
    print(f'DIDBSwin-T didb: {params / 1e6:.2f}M parameters, '
          f'{binary / 1e6:.2f}M binary weights, forward 512x512 '
          f'{time.time() - start:.1f}s')
    assert [tuple(o.shape) for o in outs] == [(1, 96, 128, 128),
                                              (1, 192, 64, 64),
                                              (1, 384, 32, 32),
                                              (1, 768, 16, 16)]
    assert all(torch.isfinite(o).all() for o in outs)
