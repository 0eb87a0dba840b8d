"""Tests of the DIDBViT backbone: presets, shapes, gradients, pretrained init,
timm equivalence and a training step inside an mmseg EncoderDecoder."""
import copy

import pytest
import timm
import torch
from mmengine.optim import OptimWrapper
from mmengine.structures import PixelData
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

from conftest import mmseg_converter
import mmseg_didb  # noqa: F401
from mmengine.registry import init_default_scope
from mmseg_didb.binary.presets import PRESETS, resolve_preset
from mmseg_didb.binary.rprelu import TokenGrid, TokenRPReLU
from mmseg_didb.models.backbones.didb_vit import DIDBViT
from mmseg_didb.models.utils.checkpoint import CheckpointMismatchError

torch.set_num_threads(1)
init_default_scope('mmseg')
PRESET_NAMES = sorted(PRESETS)
TINY = dict(embed_dims=32, num_layers=2, num_heads=2, mlp_ratio=2)


def _tiny(preset='didb', **kw):
    cfg = dict(TINY, preset=preset, img_size=64, out_indices=(0, 1))
    cfg.update(kw)
    torch.manual_seed(0)
    model = DIDBViT(**cfg)
    model.init_weights()
    return model


def _randomise_token_maps(model, seed=0):
    """Token RPReLU maps start at 0; give them values so resizing shows."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, TokenRPReLU) and m.mode == 'static':
            with torch.no_grad():
                m.token_gamma.copy_(
                    torch.randn(m.token_gamma.shape, generator=g) * 0.1)
                m.token_zeta.copy_(
                    torch.randn(m.token_zeta.shape, generator=g) * 0.1)


# ----------------------------------------------------------------- interface
def test_registered_arch_and_preset_table():
    model = MODELS.build(dict(type='DIDBViT', arch='deit-tiny', preset='fp',
                              num_layers=1))
    assert model.embed_dims == 192 and len(model.layers) == 1
    assert model.layers[0].attn.num_heads == 3
    # One shared preset table: the backbone holds what resolve_preset gives.
    m = DIDBViT(**TINY, preset='didb', preset_overrides=dict(hfsc=False))
    assert m.preset == resolve_preset('didb', hfsc=False)
    attn = m.layers[0].attn
    assert hasattr(attn.similarity, 'q')
    assert not hasattr(attn.similarity, 'q_low')
    m = DIDBViT(**TINY, preset='didb')
    assert hasattr(m.layers[0].attn.similarity, 'q_low')
    assert hasattr(m.layers[0].attn.similarity, 'k_high')
    assert isinstance(m.layers[0].mlp.fc1.act, TokenRPReLU)
    assert m.layers[0].mlp.fc1.act.grid == TokenGrid((14, 14), 1)
    with pytest.raises(ValueError, match='arch'):
        DIDBViT(arch='deit-huge')
    with pytest.raises(ValueError):
        DIDBViT(**TINY, preset='nope')
    with pytest.raises(ValueError):
        DIDBViT(**TINY, preset_overrides=dict(not_a_switch=True))
    with pytest.raises(ValueError, match='out_indices'):
        DIDBViT(**TINY, out_indices=(3, ))


# -------------------------------------------------------------------- shapes
@pytest.mark.parametrize('preset', PRESET_NAMES)
def test_shapes_every_preset_and_size(preset):
    """224, 512, 320x480 and an odd size (padded to a patch multiple)."""
    model = _tiny(preset, img_size=224, output_cls_token=True).eval()
    _randomise_token_maps(model)
    with torch.no_grad():
        for h, w in ((224, 224), (512, 512), (320, 480), (97, 131)):
            outs = model(torch.randn(1, 3, h, w))
            gh, gw = -(-h // 16), -(-w // 16)
            assert len(outs) == 2
            for fmap, cls in outs:
                assert fmap.shape == (1, 32, gh, gw)
                assert cls.shape == (1, 32)
                assert torch.isfinite(fmap).all()


def test_without_cls_token_and_final_norm():
    model = _tiny('didb', with_cls_token=False, final_norm=True,
                  out_indices=-1).eval()
    assert model.layers[0].mlp.fc1.act.token_gamma.shape == (1, 16, 1)
    with torch.no_grad():
        (out, ) = model(torch.randn(2, 3, 64, 96))
    assert out.shape == (2, 32, 4, 6)
    # the final LayerNorm normalises each token over channels
    tokens = out.flatten(2).transpose(1, 2)
    w, b = model.norm.weight, model.norm.bias
    assert torch.allclose(((tokens - b) / w).mean(-1), torch.zeros(2, 24),
                          atol=1e-4)


@pytest.mark.parametrize('preset', ['didb', 'bit', 'binaryvit'])
def test_gradients_reach_every_parameter(preset):
    model = _tiny(preset, output_cls_token=True, drop_path_rate=0.1).train()
    _randomise_token_maps(model)
    outs = model(torch.randn(2, 3, 64, 80))
    g = torch.Generator().manual_seed(1)
    loss = sum((fmap * torch.randn(fmap.shape, generator=g)).sum() +
               (cls * torch.randn(cls.shape, generator=g)).sum()
               for fmap, cls in outs)
    loss.backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert len(params) > 20
    no_grad = [n for n, p in params
               if p.grad is None or not torch.isfinite(p.grad).all()
               or p.grad.abs().sum() == 0]
    assert not no_grad, no_grad


def test_with_cp_gives_the_same_gradients():
    x = torch.randn(1, 3, 64, 64)
    grads = []
    for with_cp in (False, True):
        model = _tiny('didb', with_cp=with_cp).train()
        _randomise_token_maps(model)
        sum(o.square().mean() for o in model(x)).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6), n


def test_full_deit_small_didb_512_forward():
    torch.manual_seed(0)
    model = DIDBViT(arch='deit-small', preset='didb', img_size=512,
                    out_indices=(3, 5, 7, 11), final_norm=True).eval()
    model.init_weights()
    assert model.pos_embed.shape == (1, 1 + 32 * 32, 384)
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 512, 512))
    assert [o.shape for o in outs] == [(1, 384, 32, 32)] * 4
    assert all(torch.isfinite(o).all() for o in outs)


# ----------------------------------------------------------- pretrained init
def _timm_deit_small(img_size=224):
    torch.manual_seed(0)
    model = timm.create_model('deit_small_patch16_224', pretrained=False,
                              img_size=img_size).eval()
    # timm's default init zeroes biases; make them non-trivial so the
    # conversion of every tensor (qkv bias split, patch bias) is exercised.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith('bias'):
                p.normal_(0, 0.02)
    return model


def test_fp_equals_timm_deit_small(tmp_path):
    """Converted timm DeiT-S (random weights) == timm forward_features."""
    ref = _timm_deit_small()
    path = tmp_path / 'deit_small.pth'
    torch.save({'model': ref.state_dict()}, path)  # official DeiT layout
    model = DIDBViT(arch='deit-small', preset='fp', out_indices=(3, 11),
                    final_norm=True, output_cls_token=True,
                    init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    model.init_weights()
    model.eval()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = ref.forward_features(x)
        (_, _), (fmap, cls) = model(x)
    tokens = fmap.flatten(2).transpose(1, 2)
    assert torch.allclose(tokens, expected[:, 1:], atol=1e-4)
    assert torch.allclose(cls, expected[:, 0], atol=1e-4)
    assert torch.equal(model.patch_embed.proj.bias,
                       ref.patch_embed.proj.bias)

    # 512x512: pos_embed resized at load like mmseg (bicubic, no antialias);
    # timm's own loader gives the same tensor with antialias=False.
    big = DIDBViT(arch='deit-small', preset='fp', img_size=512,
                  out_indices=(11, ), final_norm=True,
                  init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    big.init_weights()
    ref512 = timm.models.vision_transformer.checkpoint_filter_fn(
        ref.state_dict(), timm.create_model(
            'deit_small_patch16_224', pretrained=False, img_size=512,
            depth=1), antialias=False)
    assert big.pos_embed.shape == (1, 1 + 32 * 32, 384)
    assert torch.allclose(big.pos_embed, ref512['pos_embed'], atol=1e-6)
    assert torch.equal(big.layers[11].mlp.fc2.linear.weight,
                       ref.blocks[11].mlp.fc2.weight)


def _tiny_timm():
    torch.manual_seed(0)
    ref = timm.create_model('deit_tiny_patch16_224', pretrained=False,
                            embed_dim=32, depth=2, num_heads=2, mlp_ratio=2,
                            img_size=64).eval()
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if n.endswith('bias'):
                p.normal_(0, 0.02)
    return ref


@pytest.mark.parametrize('layout', ['timm', 'mmseg', 'segmentor'])
def test_fp_load_layouts_match_timm(tmp_path, layout):
    ref = _tiny_timm()
    sd = ref.state_dict()
    prefix = None
    if layout == 'mmseg':
        sd = mmseg_converter('vit2mmseg')(sd)
    elif layout == 'segmentor':  # own checkpoint saved by a segmentor
        own = _tiny('fp', final_norm=True)
        own.load_state_dict(sd)  # converted by the load pre-hook
        sd = {'state_dict': {f'backbone.{k}': v
                             for k, v in own.state_dict().items()},
              'meta': dict(iter=1)}
        prefix = 'backbone.'
    path = tmp_path / 'ckpt.pth'
    torch.save(sd, path)
    model = _tiny('fp', final_norm=True, out_indices=-1,
                  init_cfg=dict(type='Pretrained', checkpoint=str(path),
                                prefix=prefix)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = ref.forward_features(x)[:, 1:]
        (fmap, ) = model(x)
    assert torch.allclose(fmap.flatten(2).transpose(1, 2), expected,
                          atol=1e-5)


def test_binary_preset_init_from_timm_copies_hfsc_units(tmp_path):
    ref = _tiny_timm()
    path = tmp_path / 'deit.pth'
    torch.save(ref.state_dict(), path)
    model = _tiny('didb', init_cfg=dict(type='Pretrained',
                                        checkpoint=str(path)))
    q = ref.state_dict()['blocks.1.attn.qkv.weight'][:32]
    attn = model.layers[1].attn
    assert torch.equal(attn.similarity.q_low.linear.weight, q)
    assert torch.equal(attn.similarity.q_high.linear.weight, q)
    assert torch.equal(model.patch_embed.proj.bias,
                       ref.patch_embed.proj.bias)


def test_own_checkpoint_token_maps_resized_with_pos_embed(tmp_path):
    """A model pretrained at 64 px, evaluated at 128 px, equals the same
    weights loaded into a 128 px model (maps resized once at load)."""
    small = _tiny('didb', img_size=64, out_indices=-1).eval()
    _randomise_token_maps(small)
    with torch.no_grad():
        small.pos_embed.normal_(0, 0.5)
    # warm up lazily initialised quantizer scales, then save
    with torch.no_grad():
        small(torch.randn(1, 3, 64, 64))
    path = tmp_path / 'own.pth'
    torch.save({'state_dict': small.state_dict()}, path)
    big = _tiny('didb', img_size=128, out_indices=-1,
                init_cfg=dict(type='Pretrained', checkpoint=str(path))).eval()
    assert big.layers[0].attn.proj.act.token_gamma.shape == (1, 1 + 64, 1)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        (a, ), (b, ) = small(x), big(x)
    assert torch.allclose(a, b, atol=1e-5)


def test_strict_load_errors(tmp_path):
    sd = _tiny_timm().state_dict()
    missing = dict(sd)
    del missing['blocks.1.norm2.weight']
    extra = dict(sd, **{'blocks.0.ls1.gamma': torch.ones(32)})
    for ckpt, pattern in ((missing, 'layers.1.norm2.weight'),
                          (extra, 'layers.0.ls1.gamma')):
        path = tmp_path / 'bad.pth'
        torch.save(ckpt, path)
        model = _tiny('didb', init_cfg=None)
        model.init_cfg = dict(type='Pretrained', checkpoint=str(path))
        with pytest.raises(CheckpointMismatchError,
                           match=pattern.replace('.', r'\.')):
            model.init_weights()
    # A deeper model: the checkpoint lacks its third layer.
    path = tmp_path / 'ok.pth'
    torch.save(sd, path)
    model = DIDBViT(**dict(TINY, num_layers=3), img_size=64,
                    init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    with pytest.raises(CheckpointMismatchError, match=r'layers\.2\.'):
        model.init_weights()
    model = DIDBViT(**TINY, init_cfg=dict(type='Pretrained',
                                          checkpoint=str(tmp_path / 'no.pth')))
    with pytest.raises(FileNotFoundError, match='convert_pretrained'):
        model.init_weights()


# ------------------------------------------------------- segmentor training
def _seg_cfg(backbone, channels, neck_type='MultiLevelNeck', scales=(4, 2, 1,
                                                                      0.5)):
    n = len(backbone.get('out_indices', ()))
    return dict(
        type='EncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor',
                               mean=[123.675, 116.28, 103.53],
                               std=[58.395, 57.12, 57.375], bgr_to_rgb=True,
                               pad_val=0, seg_pad_val=255, size=(64, 64)),
        backbone=backbone,
        neck=dict(type=neck_type, in_channels=[channels] * n,
                  out_channels=channels, scales=list(scales)),
        decode_head=dict(type='UPerHead', in_channels=[channels] * n,
                         in_index=list(range(n)), pool_scales=(1, 2),
                         channels=16, dropout_ratio=0.1, num_classes=4,
                         norm_cfg=dict(type='BN', requires_grad=True),
                         align_corners=False,
                         loss_decode=dict(type='CrossEntropyLoss',
                                          loss_weight=1.0)),
        train_cfg=dict(), test_cfg=dict(mode='whole'))


def _train_step(cfg, size=64):
    torch.manual_seed(0)
    model = MODELS.build(cfg)
    model.init_weights()
    model.train()
    g = torch.Generator().manual_seed(0)
    data = dict(inputs=[], data_samples=[])
    for _ in range(2):
        data['inputs'].append(
            torch.randint(0, 255, (3, size, size), generator=g,
                          dtype=torch.uint8))
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(data=torch.randint(
            0, 4, (1, size, size), generator=g))
        sample.set_metainfo(dict(img_shape=(size, size),
                                 ori_shape=(size, size),
                                 pad_shape=(size, size)))
        data['data_samples'].append(sample)
    optim = OptimWrapper(torch.optim.AdamW(model.parameters(), lr=1e-3))
    before = copy.deepcopy(model.backbone.state_dict())
    log = model.train_step(data, optim)
    assert torch.isfinite(log['loss'])
    changed = [k for k, v in model.backbone.state_dict().items()
               if v.dtype.is_floating_point and not torch.equal(v, before[k])]
    return model, changed


@pytest.mark.parametrize('neck', ['MultiLevelNeck', 'BinaryMultiLevelNeck'])
def test_tiny_train_step_upernet_multilevel_neck(neck):
    backbone = dict(type='DIDBViT', **TINY, img_size=64, preset='didb',
                    out_indices=(0, 1))
    model, changed = _train_step(
        _seg_cfg(backbone, 32, neck_type=neck, scales=(2, 0.5)))
    assert type(model.neck).__name__ == neck
    assert 'layers.0.attn.similarity.q_low.linear.weight' in changed
    assert 'patch_embed.proj.weight' in changed
    with torch.no_grad():
        model.eval()
        out = model(torch.randn(1, 3, 64, 64), mode='tensor')
    assert out.shape == (1, 4, 8, 8)  # 64 px / 16 * scale 2


@pytest.mark.parametrize('preset', PRESET_NAMES)
def test_deit_small_every_preset_train_step(preset):
    """DeiT-S width for every preset; depth 4 and 64 px to keep CI fast."""
    backbone = dict(type='DIDBViT', arch='deit-small', preset=preset,
                    num_layers=4, out_indices=(0, 1, 2, 3), img_size=64,
                    drop_path_rate=0.1)
    _, changed = _train_step(_seg_cfg(backbone, 384))
    assert 'layers.3.mlp.fc2.linear.weight' in changed
