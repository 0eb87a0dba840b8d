"""Tests of the ViT / DeiT state-dict conversion (mmseg_didb.models.utils)."""
import os.path as osp

import pytest
import torch
import timm

from conftest import mmseg_converter
import mmseg_didb  # noqa: F401
from mmseg_didb.binary.rprelu import TokenGrid, resize_token_map
from mmseg_didb.models.utils.vit_convert import (adapt_to_model,
                                                 convert_vit_checkpoint,
                                                 detect_layout, is_fp_key,
                                                 to_fp_layout)

torch.set_num_threads(1)
C, DEPTH = 32, 2


def _timm_sd(distilled=False):
    name = ('deit_tiny_distilled_patch16_224' if distilled
            else 'deit_tiny_patch16_224')
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, embed_dim=C,
                              depth=DEPTH, num_heads=2, img_size=64)
    return model.state_dict()


def test_timm_layout_splits_qkv():
    sd = _timm_sd()
    assert detect_layout(sd) == 'timm'
    out = to_fp_layout(sd)
    qkv_w = sd['blocks.1.attn.qkv.weight']
    qkv_b = sd['blocks.1.attn.qkv.bias']
    for i, name in enumerate(('similarity.q', 'similarity.k', 'v')):
        assert torch.equal(out[f'layers.1.attn.{name}.linear.weight'],
                           qkv_w[i * C:(i + 1) * C])
        assert torch.equal(out[f'layers.1.attn.{name}.linear.bias'],
                           qkv_b[i * C:(i + 1) * C])
    assert torch.equal(out['layers.0.mlp.fc2.linear.weight'],
                       sd['blocks.0.mlp.fc2.weight'])
    assert torch.equal(out['layers.0.attn.proj.linear.bias'],
                       sd['blocks.0.attn.proj.bias'])
    assert torch.equal(out['patch_embed.proj.bias'],
                       sd['patch_embed.proj.bias'])
    assert 'norm.weight' in out and 'layers.1.norm2.bias' in out
    assert not any('qkv' in k or k.startswith('blocks.') for k in out)


def test_mmseg_layout_matches_timm_layout():
    """vit2mmseg(timm) converted back equals the direct timm conversion."""
    sd = _timm_sd()
    mm = mmseg_converter('vit2mmseg')(sd)
    # The mmseg layout is the one mmseg's VisionTransformer really uses.
    from mmseg.models.backbones import VisionTransformer
    vit = VisionTransformer(img_size=64, embed_dims=C, num_layers=DEPTH,
                            num_heads=2, patch_bias=True, final_norm=True)
    assert set(vit.state_dict()) == set(mm)
    assert detect_layout(mm) == 'mmseg'
    a, b = to_fp_layout(sd), to_fp_layout(mm)
    b = {k: v for k, v in b.items()}
    # vit2mmseg drops the classification head, the timm path keeps it.
    assert set(a) - set(b) == {'head.weight', 'head.bias'}
    for k in b:
        assert torch.equal(a[k], b[k]), k


def test_wrapped_checkpoints_and_bad_layout():
    sd = _timm_sd()
    target = {k: v for k, v in to_fp_layout(sd).items()
              if not k.startswith('head')}
    ref, _ = convert_vit_checkpoint(sd, target, grid=(4, 4))
    segmentor = {'state_dict': {f'backbone.{k}': v for k, v in sd.items()},
                 'meta': {}}
    segmentor['state_dict']['decode_head.conv_seg.weight'] = torch.zeros(1)
    for ckpt in ({'model': sd}, segmentor,
                 {f'module.{k}': v for k, v in sd.items()}):
        out, report = convert_vit_checkpoint(ckpt, target, grid=(4, 4))
        assert report['layout'] == 'timm'
        assert out.keys() == ref.keys()
    with pytest.raises(ValueError, match='Unrecognised'):
        detect_layout({'foo.weight': torch.zeros(1)})


def test_fp_key_pattern():
    assert is_fp_key('layers.3.attn.similarity.q_low.linear.weight')
    assert is_fp_key('patch_embed.proj.bias')
    assert is_fp_key('norm.weight') and is_fp_key('pos_embed')
    assert not is_fp_key('layers.3.attn.similarity.q_low.norm.weight')
    assert not is_fp_key('layers.0.mlp.fc1.act.token_gamma')
    assert not is_fp_key('layers.0.attn.aggregation.shortcut_scale')
    assert not is_fp_key('layers.0.attn.similarity.q.linear.input_quantizer.bias')


def test_resize_token_map_keeps_cls_and_is_identity_on_same_grid():
    torch.manual_seed(0)
    pos = torch.randn(1, 1 + 4 * 4, 8)
    cls_grid = TokenGrid((4, 4), 1)
    assert resize_token_map(pos, cls_grid, (4, 4)) is pos
    out = resize_token_map(pos, cls_grid, (8, 6), 'bilinear')
    assert out.shape == (1, 1 + 48, 8)
    assert torch.equal(out[:, 0], pos[:, 0])
    # A constant map stays constant under interpolation.
    const = torch.ones(1, 16, 1)
    assert torch.allclose(resize_token_map(const, (4, 4), (7, 5)),
                          torch.ones(1, 35, 1))
    with pytest.raises(ValueError, match='grid'):
        resize_token_map(pos, TokenGrid((5, 5), 1), (4, 4))


def test_adapt_hfsc_copies_and_resizes():
    sd = to_fp_layout(_timm_sd())
    shapes = {k: v.shape for k, v in sd.items() if not k.startswith('head')}
    for unit in ('q', 'k'):
        for part in ('weight', 'bias'):
            key = f'layers.0.attn.similarity.{unit}.linear.{part}'
            s = shapes.pop(key)
            shapes[key.replace(f'.{unit}.', f'.{unit}_low.')] = s
            shapes[key.replace(f'.{unit}.', f'.{unit}_high.')] = s
    shapes['pos_embed'] = torch.Size([1, 1 + 8 * 6, C])
    shapes['layers.0.attn.proj.act.token_gamma'] = torch.Size([1, 49, 1])
    sd['layers.0.attn.proj.act.token_gamma'] = torch.randn(1, 17, 1)
    out, dropped = adapt_to_model(sd, shapes, grid=(8, 6))
    assert sorted(dropped) == ['head.bias', 'head.weight']
    q = sd['layers.0.attn.similarity.q.linear.weight']
    assert torch.equal(out['layers.0.attn.similarity.q_low.linear.weight'], q)
    assert torch.equal(out['layers.0.attn.similarity.q_high.linear.weight'], q)
    assert 'layers.0.attn.similarity.q.linear.weight' not in out
    # Layer 1 has no HFSC units in the target: its q stays as it is.
    assert 'layers.1.attn.similarity.q.linear.weight' in out
    assert out['pos_embed'].shape == (1, 49, C)
    assert torch.equal(out['pos_embed'][:, 0], sd['pos_embed'][:, 0])
    assert out['layers.0.attn.proj.act.token_gamma'].shape == (1, 49, 1)


def test_adapt_hfsc_split_takes_head_halves():
    sd = to_fp_layout(_timm_sd())
    q = sd['layers.0.attn.similarity.q.linear.weight']  # 2 heads of 16 dims
    shapes = {'layers.0.attn.similarity.q_low.linear.weight': torch.Size([C // 2, C]),
              'layers.0.attn.similarity.q_high.linear.weight': torch.Size([C // 2, C])}
    out, _ = adapt_to_model({'layers.0.attn.similarity.q.linear.weight': q}, shapes,
                             grid=(4, 4), num_heads=2)
    heads = q.reshape(2, 16, C)
    assert torch.equal(out['layers.0.attn.similarity.q_low.linear.weight'],
                       heads[:, :8].reshape(16, C))
    assert torch.equal(out['layers.0.attn.similarity.q_high.linear.weight'],
                       heads[:, 8:].reshape(16, C))
    # Q_L K_L^T + Q_H K_H^T equals Q K^T per head (split identity)
    k = sd['layers.0.attn.similarity.k.linear.weight']
    out_k, _ = adapt_to_model({'layers.0.attn.similarity.k.linear.weight': k}, {
        k_.replace('q_', 'k_'): s for k_, s in shapes.items()}, grid=(4, 4),
        num_heads=2)
    x = torch.randn(5, C)
    full = (x @ q.T).reshape(5, 2, 16).transpose(0, 1) @ \
        (x @ k.T).reshape(5, 2, 16).permute(1, 2, 0)

    def head_view(w):
        return (x @ w.T).reshape(5, 2, 8).transpose(0, 1)
    split = sum(head_view(out[f'layers.0.attn.similarity.q_{b}.linear.weight']) @
                head_view(out_k[f'layers.0.attn.similarity.k_{b}.linear.weight']
                          ).transpose(1, 2) for b in ('low', 'high'))
    assert torch.allclose(full, split, atol=1e-5)


def test_distilled_deit_drops_dist_token():
    sd = _timm_sd(distilled=True)
    shapes = {k: v.shape for k, v in to_fp_layout(
        _timm_sd()).items() if not k.startswith('head')}
    model_sd = {k: torch.zeros(s) for k, s in shapes.items()}
    out, report = convert_vit_checkpoint({'model': sd}, model_sd, grid=(4, 4))
    assert {'dist_token', 'head_dist.weight'} <= set(report['dropped'])
    assert report['kept_init'] == []
    assert out['pos_embed'].shape == shapes['pos_embed']
    assert torch.equal(out['pos_embed'][:, 0], sd['pos_embed'][:, 0])
    assert torch.equal(out['pos_embed'][:, 1:], sd['pos_embed'][:, 2:])


def test_convert_pretrained_tool_vit(tmp_path):
    """tools/convert_pretrained.py: official DeiT file -> loads into any
    preset at another input size, and equals timm in the fp preset."""
    import sys
    sys.path.insert(0, osp.join(osp.dirname(__file__), '..', 'tools'))
    from convert_pretrained import main
    from mmseg_didb.models.backbones import DIDBViT
    torch.manual_seed(0)
    ref = timm.create_model('deit_tiny_patch16_224', pretrained=False,
                            embed_dim=C, depth=DEPTH, num_heads=2,
                            img_size=64).eval()
    src = str(tmp_path / 'deit.pth')
    torch.save({'model': ref.state_dict()}, src)
    dst = main([src, str(tmp_path / 'out' / 'deit_fp.pth')])
    ckpt = torch.load(dst, weights_only=True)
    assert ckpt['meta']['layout'] == 'timm'
    arch = ckpt['meta']['arch']
    assert (arch['embed_dims'], arch['num_layers'], arch['img_size']) == \
        (C, DEPTH, (64, 64))
    kw = dict(embed_dims=C, num_layers=DEPTH, num_heads=2, out_indices=-1,
              final_norm=True)
    model = DIDBViT(preset='fp', img_size=64, **kw,
                    init_cfg=dict(type='Pretrained', checkpoint=dst))
    model.init_weights()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        (fmap, ) = model.eval()(x)
        expected = ref.forward_features(x)[:, 1:]
    assert torch.allclose(fmap.flatten(2).transpose(1, 2), expected,
                          atol=1e-5)
    for preset in ('didb', 'react'):  # strict: every backbone key matched
        DIDBViT(preset=preset, img_size=128, **kw, init_cfg=dict(
            type='Pretrained', checkpoint=dst)).init_weights()
