"""Swin checkpoint conversion: timm, official, mmseg/mmpretrain, own; errors."""
import os.path as osp
import re

import pytest
import torch
import torch.nn as nn

from conftest import mmseg_converter
import mmseg_didb  # noqa: F401
from mmseg_didb.models.backbones.didb_swin import DIDBSwin
from mmseg_didb.models.utils.checkpoint import (CheckpointMismatchError,
                                                load_checkpoint_strict,
                                                read_state_dict)
from mmseg_didb.models.utils.swin_convert import (detect_swin_layout,
                                                  is_fp_key)

torch.set_num_threads(1)
TINY = dict(embed_dims=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4),
            window_size=4, drop_path_rate=0., pretrain_img_size=64)
SIZE = 256  # every stage (64, 32, 16, 8) is larger than the window 4


@pytest.fixture(scope='module')
def timm_swin():
    from timm.models.swin_transformer import SwinTransformer
    torch.manual_seed(0)
    return SwinTransformer(img_size=SIZE, embed_dim=16, depths=(2, 2, 2, 2),
                           num_heads=(1, 2, 2, 4), window_size=4,
                           num_classes=10).eval()


@pytest.fixture(scope='module')
def image():
    torch.manual_seed(1)
    return torch.randn(1, 3, SIZE, SIZE)


def timm_features(model, x, norms):
    """timm stage outputs through the given output norms (NCHW)."""
    with torch.no_grad():
        feats = model.forward_intermediates(x, intermediates_only=True)
        return [n(f.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
                for n, f in zip(norms, feats)]


def didb_norms(model: DIDBSwin, final: nn.Module):
    return [getattr(model, f'norm{i}') for i in range(3)] + [final]


def to_official(timm_sd):
    """timm >= 0.9 -> official Microsoft layout (+ its persistent buffers)."""
    out = {}
    for k, v in timm_sd.items():
        k = re.sub(r'^layers\.(\d+)\.downsample',
                   lambda m: f'layers.{int(m.group(1)) - 1}.downsample', k)
        out[k.replace('head.fc.', 'head.')] = v
    out['layers.0.blocks.0.attn.relative_position_index'] = torch.zeros(
        16, 16, dtype=torch.long)
    out['layers.0.blocks.1.attn_mask'] = torch.zeros(256, 16, 16)
    return {'model': out}


def mmseg_swin(**kw):
    from mmseg.models.backbones import SwinTransformer
    model = SwinTransformer(embed_dims=16, depths=(2, 2, 2, 2),
                            num_heads=(1, 2, 2, 4), window_size=4,
                            drop_path_rate=0., **kw)
    model.eval()  # mmseg's train() returns None
    return model


def check_close(outs, refs, atol=1e-5):
    assert len(outs) == len(refs)
    for o, r in zip(outs, refs):
        assert o.shape == r.shape
        torch.testing.assert_close(o, r, atol=atol, rtol=1e-4)


def fp_swin_from_file(path, timm_swin, image):
    """An FP DIDBSwin initialised from ``path`` by its ``init_cfg``, with its
    feature maps checked against timm's; returns both."""
    model = DIDBSwin(preset='fp', **TINY,
                     init_cfg=dict(type='Pretrained', checkpoint=path))
    model.init_weights()
    model.eval()
    with torch.no_grad():
        outs = model(image)
    check_close(outs, timm_features(timm_swin, image,
                                    didb_norms(model, timm_swin.norm)))
    return model, outs


def test_timm_checkpoint_file_via_init_cfg(tmp_path, timm_swin, image):
    path = str(tmp_path / 'timm_swin.pth')
    torch.save(timm_swin.state_dict(), path)
    model, outs = fp_swin_from_file(path, timm_swin, image)
    # the final timm norm became the last output norm
    assert torch.equal(model.norm3.weight, timm_swin.norm.weight)


def test_official_checkpoint_agrees_with_timm_and_mmseg(tmp_path, timm_swin,
                                                       image):
    official = to_official(timm_swin.state_dict())
    assert detect_swin_layout(official['model']) == 'official'
    path = str(tmp_path / 'official.pth')
    torch.save(official, path)
    model, outs = fp_swin_from_file(path, timm_swin, image)
    # mmseg's own official->mmseg converter + mmseg's Swin give the same maps
    ref = mmseg_swin()
    missing, unexpected = ref.load_state_dict(
        mmseg_converter('swin2mmseg')(official['model']), strict=False)
    # mmseg's converter leaves the classifier's final norm unused (its norm3
    # stays at init); here it is the last output norm, as in DIDBSwin
    assert set(unexpected) == {'norm.weight', 'norm.bias',
                               'stages.0.blocks.1.attn_mask'}
    assert all('relative_position_index' in k or re.match(r'norm[0123]\.', k)
               for k in missing)
    ref.norm3.load_state_dict({'weight': official['model']['norm.weight'],
                               'bias': official['model']['norm.bias']})
    with torch.no_grad():  # mmseg sums in nn.Unfold order: float noise only
        check_close(outs, ref(image), atol=1e-3)


def test_mmseg_segmentor_checkpoint_with_prefix(tmp_path, image):
    torch.manual_seed(2)
    ref = mmseg_swin()
    ref.init_weights()
    with torch.no_grad():  # non-trivial output norms
        for i in range(4):
            getattr(ref, f'norm{i}').weight.uniform_(0.5, 1.5)
            getattr(ref, f'norm{i}').bias.normal_()
    ckpt = {'state_dict': {f'backbone.{k}': v
                           for k, v in ref.state_dict().items()},
            'meta': {}}
    ckpt['state_dict']['decode_head.conv_seg.weight'] = torch.zeros(3, 8, 1, 1)
    path = str(tmp_path / 'mmseg_seg.pth')
    torch.save(ckpt, path)
    model = DIDBSwin(preset='fp', **TINY, init_cfg=dict(
        type='Pretrained', checkpoint=path, prefix='backbone.'))
    model.init_weights()
    model.eval()
    with torch.no_grad():
        check_close(model(image), ref(image), atol=1e-3)
    # prefix=None finds the backbone keys as well
    again = DIDBSwin(preset='fp', **TINY)
    load_checkpoint_strict(again, path)
    loaded = again.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(loaded[k], v), k


def test_mmseg_unfold_order_is_inverted(timm_swin):
    """mmseg -> FP layout undoes swin2mmseg's patch-merging reorder exactly,
    and the fused qkv becomes the q/k/v units."""
    from mmseg_didb.models.utils.swin_convert import to_fp_layout
    official = to_official(timm_swin.state_dict())['model']
    mm = mmseg_converter('swin2mmseg')(official)
    back, layout, _ = to_fp_layout(mm)
    assert layout == 'mmseg'
    sd = timm_swin.state_dict()
    for k, ref in (('layers.1.downsample.reduction.linear.weight',
                    'layers.1.downsample.reduction.weight'),
                   ('layers.3.downsample.norm.weight',) * 2,
                   ('patch_embed.proj.weight',) * 2,
                   ('layers.0.blocks.0.mlp.fc2.linear.bias',
                    'layers.0.blocks.0.mlp.fc2.bias')):
        assert torch.equal(back[k], sd[ref]), k
    qkv = sd['layers.2.blocks.1.attn.qkv.weight'].chunk(3)
    for name, ref in zip(('similarity.q', 'similarity.k', 'v'), qkv):
        got = back[f'layers.2.blocks.1.attn.{name}.linear.weight']
        assert torch.equal(got, ref), name


@pytest.mark.parametrize('hfsc', ['full', 'split'])
def test_didb_preset_from_timm_inits_from_fp_counterparts(timm_swin, hfsc):
    model = DIDBSwin(preset='didb', preset_overrides=dict(hfsc=hfsc), **TINY)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    sd = timm_swin.state_dict()
    result = model.load_state_dict(sd, strict=True)  # every key matched
    assert not result.missing_keys and not result.unexpected_keys
    attn = model.layers[2].blocks[1].attn
    sim = attn.similarity
    C = 64
    qkv = sd['layers.2.blocks.1.attn.qkv.weight']
    q, k, v = qkv[:C], qkv[C:2 * C], qkv[2 * C:]
    if hfsc == 'full':  # Q_L = Q_H = Q, K_L = K_H = K
        for unit, ref in ((sim.q_low, q), (sim.q_high, q),
                          (sim.k_low, k), (sim.k_high, k)):
            assert torch.equal(unit.linear.weight, ref)
    else:  # halves of every head: [Q_L | Q_H] per head == Q
        heads, hd = 2, C // 2
        joined = torch.cat([sim.q_low.linear.weight.view(heads, hd // 2, C),
                            sim.q_high.linear.weight.view(heads, hd // 2, C)],
                           1).reshape(C, C)
        assert torch.equal(joined, q)
    assert torch.equal(attn.v.linear.weight, v)
    assert torch.equal(attn.proj.linear.weight,
                       sd['layers.2.blocks.1.attn.proj.weight'])
    assert torch.equal(model.layers[1].downsample.reduction.linear.weight,
                       sd['layers.1.downsample.reduction.weight'])
    # binary-only parameters keep their init (documented)
    binary_only = [k for k in init if not is_fp_key(k)]
    assert 'layers.0.blocks.0.attn.aggregation.shortcut_scale' in binary_only
    assert 'layers.0.blocks.0.attn.similarity.mix' in binary_only
    loaded = model.state_dict()
    for k in binary_only:
        assert torch.equal(loaded[k], init[k]), k


def test_fp_own_checkpoint_initialises_binary_model():
    fp = DIDBSwin(preset='fp', **TINY)
    fp.init_weights()
    didb = DIDBSwin(preset='didb', **TINY)
    load_checkpoint_strict(didb, {'state_dict': fp.state_dict()})
    for unit in ('q_low', 'q_high'):
        assert torch.equal(
            getattr(didb.layers[0].blocks[0].attn.similarity,
                    unit).linear.bias,
            fp.layers[0].blocks[0].attn.similarity.q.linear.bias)


@pytest.mark.parametrize('preset', ['didb', 'bit'])
def test_own_backbone_and_segmentor_checkpoints_roundtrip(tmp_path, preset):
    torch.manual_seed(3)
    src = DIDBSwin(preset=preset, **TINY)
    src.init_weights()
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.01 * torch.randn_like(p))
    seg = {'state_dict': {**{f'backbone.{k}': v
                             for k, v in src.state_dict().items()},
                          'decode_head.conv_seg.bias': torch.zeros(3)},
           'meta': {'iter': 1}}
    path = str(tmp_path / 'seg.pth')
    torch.save(seg, path)
    for ckpt, prefix in ((path, 'backbone.'), (path, None),
                         (src.state_dict(), None)):
        dst = DIDBSwin(preset=preset, **TINY)
        load_checkpoint_strict(dst, ckpt, prefix=prefix)
        loaded = dst.state_dict()
        for k, v in src.state_dict().items():
            assert torch.equal(loaded[k], v), k


def test_segmentor_level_load_state_dict_converts(timm_swin):
    """The pre-hook also runs when the backbone is nested (prefix 'backbone.')."""
    seg = nn.Module()
    seg.backbone = DIDBSwin(preset='fp', **TINY)
    seg.load_state_dict({f'backbone.{k}': v
                         for k, v in timm_swin.state_dict().items()})
    assert torch.equal(seg.backbone.layers[0].blocks[0].attn.v.linear.weight,
                       timm_swin.state_dict()[
                           'layers.0.blocks.0.attn.qkv.weight'][32:])


def test_relative_position_bias_resized_for_other_window(timm_swin):
    from timm.layers import resize_rel_pos_bias_table
    model = DIDBSwin(preset='fp', **{**TINY, 'window_size': 6})
    model.load_state_dict(timm_swin.state_dict())
    src = timm_swin.state_dict()['layers.1.blocks.0.attn.relative_position_bias_table']
    want = resize_rel_pos_bias_table(src, (6, 6), (121, 2))
    got = model.layers[1].blocks[0].attn.relative_position_bias_table
    assert got.shape == (121, 2)
    torch.testing.assert_close(got, want)


def test_bad_checkpoints_raise(tmp_path, timm_swin):
    model = DIDBSwin(preset='didb', **TINY)
    with pytest.raises(FileNotFoundError, match='convert_pretrained.py'):
        DIDBSwin(preset='fp', **TINY, init_cfg=dict(
            type='Pretrained', checkpoint=str(tmp_path / 'nope.pth'))
        ).init_weights()
    with pytest.raises(ValueError, match='unrecognised Swin checkpoint'):
        load_checkpoint_strict(model, {'blocks.0.attn.qkv.weight':
                                       torch.zeros(3, 1)})
    truncated = {k: v for k, v in timm_swin.state_dict().items()
                 if not k.startswith('layers.3.blocks.1.mlp')}
    with pytest.raises(CheckpointMismatchError,
                       match=r'missing keys \[layers\.3\.blocks\.1\.mlp'):
        load_checkpoint_strict(model, truncated)
    extra = dict(timm_swin.state_dict())
    extra['layers.0.blocks.2.norm1.weight'] = torch.ones(16)
    with pytest.raises(CheckpointMismatchError,
                       match=r'unexpected keys \[layers\.0\.blocks\.2\.norm1'):
        load_checkpoint_strict(model, extra)
    with pytest.raises(KeyError, match='prefix'):
        load_checkpoint_strict(model, timm_swin.state_dict(),
                               prefix='backbone.')
    # a binary checkpoint of another preset: binary-only keys do not match
    other = DIDBSwin(preset='react', **TINY)
    with pytest.raises(CheckpointMismatchError, match='missing keys'):
        load_checkpoint_strict(model, other.state_dict())
    # wrong width: shape mismatch is reported by torch
    wide = DIDBSwin(preset='fp', **{**TINY, 'embed_dims': 32})
    with pytest.raises(RuntimeError, match='size mismatch'):
        load_checkpoint_strict(model, wide.state_dict())


def test_convert_pretrained_tool(tmp_path, timm_swin, image):
    import sys
    sys.path.insert(0, osp.join(osp.dirname(__file__), '..', 'tools'))
    from convert_pretrained import main
    src = str(tmp_path / 'mm.pth')
    ref = mmseg_swin()
    ref.init_weights()
    torch.save({'state_dict': {f'backbone.{k}': v
                               for k, v in ref.state_dict().items()}}, src)
    dst = main([src, str(tmp_path / 'out' / 'swin.pth')])
    ckpt = torch.load(dst, weights_only=True)
    assert ckpt['meta']['layout'] == 'mmseg'
    assert ckpt['meta']['arch']['depths'] == (2, 2, 2, 2)
    for preset in ('fp', 'didb'):
        model = DIDBSwin(preset=preset, **TINY, init_cfg=dict(
            type='Pretrained', checkpoint=dst))
        model.init_weights()  # strict: every backbone key matched
    model = DIDBSwin(preset='fp', **TINY)
    load_checkpoint_strict(model, dst)
    with torch.no_grad():
        check_close(model.eval()(image), ref(image), atol=1e-3)


def test_read_state_dict_whole_model(tmp_path):
    w = torch.ones(2)
    path = str(tmp_path / 'ckpt.pth')
    # a segmentor checkpoint: every key is kept, ``module.`` stripped
    torch.save({'state_dict': {'module.backbone.w': w, 'module.head.b': w},
                'meta': {'iter': 3}}, path)
    assert sorted(read_state_dict(path)) == ['backbone.w', 'head.b']
    # the first container key holding a dict wins
    torch.save({'model': {'a': w}, 'model_ema': {'a_ema': w}}, path)
    assert list(read_state_dict(path, ('model_ema', 'model'))) == ['a_ema']
    assert list(read_state_dict(path, ('state_dict', 'model'))) == ['a']
    torch.save([w], path)
    with pytest.raises(ValueError, match='no state dict'):
        read_state_dict(path)
