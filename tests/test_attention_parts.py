"""The parts of DIDB attention: HFSCSimilarity, DIBAggregation, the {0, a}
start owned by the binarizer, and first-release checkpoints."""
import re

import pytest
import torch

import mmseg_didb  # noqa: F401
from mmseg_didb.binary.presets import PRESETS
from mmseg_didb.binary.quantizers import (SAB, ElasticUnsigned,
                                          build_attn_quantizer,
                                          prob_level_init)
from mmseg_didb.models.backbones import DIDBSwin, DIDBViT
from mmseg_didb.models.layers import (DIBAggregation, DIDBAttention,
                                      HFSCSimilarity, legacy_attention_key)
from mmseg_didb.models.utils.checkpoint import load_checkpoint_strict

torch.set_num_threads(1)

# first-release names, written out (not derived from the code under test)
_OLD_NAMES = (
    (r'(^|\.)similarity\.((q|k)(_low|_high)?(_quant)?)\.', r'\1\2.'),
    (r'(^|\.)similarity\.mix$', r'\1hfsc_mix'),
    (r'(^|\.)aggregation\.shortcut_scale$', r'\1diba_scale'),
    (r'(^|\.)aggregation\.local_scale$', r'\1diba_local_scale'),
)


def _first_release(sd, vit_stem=False):
    """``sd`` under first-release names; that ViT's stem was mmseg's
    ``patch_embed.projection``."""
    out = {}
    for k, v in sd.items():
        for pattern, repl in _OLD_NAMES:
            k = re.sub(pattern, repl, k)
        if vit_stem:
            k = re.sub(r'^patch_embed\.proj\.', 'patch_embed.projection.', k)
        out[k] = v
    return out


def _randomise(module, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(-0.5, 1.0)


def test_prob_level_starts_at_one_over_keys():
    assert prob_level_init(49) == pytest.approx(1 / 49)
    assert prob_level_init() == 0.005  # BinaryViT-Le's value
    assert prob_level_init(49, init=0.01) == 0.01
    with pytest.raises(ValueError, match='num_keys'):
        prob_level_init(0)
    q = build_attn_quantizer('elastic', num_keys=49)
    assert isinstance(q, ElasticUnsigned)
    torch.testing.assert_close(q.alpha.detach(), torch.tensor([1 / 49]))
    assert isinstance(build_attn_quantizer('sab', num_keys=49), SAB)
    # the preset hands the number of keys to its binarizer
    a = PRESETS['didb'].attn_quantizer(num_keys=16, level_init=None)
    torch.testing.assert_close(a.alpha.detach(), torch.tensor([1 / 16]))


def test_similarity_is_scaled_mixed_sum_of_branch_products():
    torch.manual_seed(0)
    attn = DIDBAttention(8, 2, PRESETS['didb'], grid=(2, 3))
    sim = attn.similarity
    assert isinstance(sim, HFSCSimilarity)
    with torch.no_grad():
        sim.mix.uniform_(0.5, 1.5)
    qs = [torch.randn(2, 6, 8).sign() for _ in range(2)]
    ks = [torch.randn(2, 6, 8).sign() for _ in range(2)]
    want = 0
    for i, (q, k) in enumerate(zip(qs, ks)):
        qh = q.view(2, 6, 2, 4).transpose(1, 2)
        kh = k.view(2, 6, 2, 4).transpose(1, 2)
        want = want + sim.mix[:, i].view(1, 2, 1, 1) * (qh @ kh.transpose(
            -2, -1)) / 2.0  # sqrt(head dim 4)
    torch.testing.assert_close(sim(qs, ks), want)


def test_aggregation_is_ab_v_plus_shortcut_term():
    torch.manual_seed(0)
    agg = DIBAggregation(8, 2, PRESETS['didb'])
    with torch.no_grad():
        agg.shortcut_scale.uniform_(0.5, 2.0)
    attn = (torch.rand(2, 2, 5, 5) > 0.5).float() * 0.2
    v = torch.randn(2, 2, 5, 4).sign()
    k = attn.sum(-1, keepdim=True)
    l_s = agg.shortcut_scale.view(1, 2, 1, 4)
    torch.testing.assert_close(agg(attn, v), attn @ v + (l_s - k) * v)
    off = DIBAggregation(8, 2, PRESETS['react'])
    torch.testing.assert_close(off(attn, v), attn @ v)
    with pytest.raises(RuntimeError, match='diba_local'):
        off.local_term(torch.randn(1, 4, 8), (2, 2))


def test_first_release_attention_checkpoint_loads_unchanged():
    ref = DIDBAttention(16, 2, PRESETS['didb'], grid=(4, 4)).eval()
    _randomise(ref, 0)
    old = _first_release(ref.state_dict())
    assert 'hfsc_mix' in old and 'q_low.linear.weight' in old
    assert 'diba_local_scale' in old and 'k_high_quant.bias' in old
    assert {legacy_attention_key(k) for k in old} == set(ref.state_dict())
    model = DIDBAttention(16, 2, PRESETS['didb'], grid=(4, 4)).eval()
    model.load_state_dict(old, strict=True)
    x = torch.randn(2, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x, (4, 4)), ref(x, (4, 4)))


@pytest.mark.parametrize('build,vit_stem', [
    (lambda: DIDBSwin(preset='didb', embed_dims=16, depths=(1, 1),
                      num_heads=(1, 2), window_size=4, pretrain_img_size=32,
                      out_indices=(0, 1)), False),
    (lambda: DIDBViT(preset='didb', embed_dims=16, num_layers=1, num_heads=2,
                     img_size=32, patch_size=8), True),
], ids=['swin', 'vit'])
def test_first_release_backbone_checkpoint_loads_strictly(build, vit_stem):
    ref = build().eval()
    _randomise(ref, 1)
    model = build().eval()
    old = _first_release(ref.state_dict(), vit_stem)
    assert ('patch_embed.projection.weight' in old) == vit_stem
    load_checkpoint_strict(model, {'state_dict': old})
    for k, v in ref.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
