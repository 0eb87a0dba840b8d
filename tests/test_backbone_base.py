"""What DIDBSwin and DIDBViT share (DIDBBackbone): arch dicts, negative
out_indices, preset keyword overrides, the deprecated pretrained=."""
import pytest
import torch

import mmseg_didb  # noqa: F401
from mmseg_didb.binary.presets import resolve_preset
from mmseg_didb.models.backbones import DIDBSwin, DIDBViT

SWIN = dict(arch=dict(embed_dims=16, depths=(1, 1), num_heads=(1, 2)),
            window_size=4, pretrain_img_size=32)
VIT = dict(arch=dict(embed_dims=16, num_layers=2, num_heads=2), img_size=32,
           patch_size=8)


@pytest.mark.parametrize('cls,kw,num', [(DIDBSwin, SWIN, 2),
                                        (DIDBViT, VIT, 2)])
def test_both_backbones_resolve_the_same_arguments(cls, kw, num):
    m = cls(**kw, out_indices=(-1, 0), preset='didb', hfsc=False)
    assert m.out_indices == (num - 1, 0)
    assert m.preset == resolve_preset('didb', hfsc=False)
    with pytest.raises(ValueError, match='out of range'):
        cls(**kw, out_indices=(num, ))
    with pytest.raises(ValueError, match='lacks'):
        cls(arch=dict(embed_dims=16))
    with pytest.raises(ValueError, match='arch'):
        cls(arch='no-such-arch')
    kw = dict(kw, out_indices=(0, ))
    with pytest.warns(UserWarning, match='deprecated'):
        m = cls(**kw, pretrained='x.pth')
    assert m.init_cfg == dict(type='Pretrained', checkpoint='x.pth')
    with pytest.raises(ValueError, match='not both'):
        cls(**kw, pretrained='x.pth', init_cfg=dict(type='Pretrained',
                                                    checkpoint='y.pth'))


def test_fresh_init_is_timm_init_for_both():
    torch.manual_seed(0)
    for m in (DIDBSwin(**SWIN, out_indices=(0, 1), preset='fp'),
              DIDBViT(**VIT, preset='fp')):
        m.init_weights()
        for name, p in m.named_parameters():
            if name.endswith('linear.weight'):  # trunc_normal_(std=.02)
                assert 0.015 < p.std() < 0.025, name
                assert abs(p.mean()) < 0.01, name
            if name.endswith('linear.bias'):
                assert torch.all(p == 0), name


@pytest.mark.parametrize('cls,kw', [(DIDBSwin, SWIN), (DIDBViT, VIT)])
def test_one_stem_for_both_backbones(cls, kw):
    """Both stems are timm's PatchEmbed (``patch_embed.proj``), zero-padding
    inputs that are not a patch multiple at the bottom/right."""
    from timm.layers import PatchEmbed
    torch.manual_seed(0)
    m = cls(**kw, out_indices=(0, ), preset='fp').eval()
    assert isinstance(m.patch_embed, PatchEmbed)
    assert 'patch_embed.proj.weight' in m.state_dict()
    p = m.patch_embed.patch_size[0]
    x = torch.randn(1, 3, 29, 35)
    hw = (-(-29 // p), -(-35 // p))
    padded = torch.nn.functional.pad(x, (0, hw[1] * p - 35, 0, hw[0] * p - 29))
    with torch.no_grad():
        tokens, got_hw = m._embed_patches(x)
        ref, ref_hw = m._embed_patches(padded)
    assert got_hw == ref_hw == hw
    torch.testing.assert_close(tokens, ref)


def test_vit_stem_refuses_other_padding():
    with pytest.raises(ValueError, match='corner'):
        DIDBViT(**VIT, patch_pad='same')
