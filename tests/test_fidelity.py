"""Method-fidelity fixes: gradient windows of every sign on the real configs,
the preset-driven GRS loss, the neck's norm, the running input magnitude and
the positive {0, a} / {-a, a} scales."""
import mmseg_didb  # noqa: F401  (first: installs the mmcv-lite shims)
from pathlib import Path

import pytest
import torch
from mmengine.logging import MessageHub
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS

from conftest import tiny_segmentor as shared_tiny_segmentor
from mmseg_didb.analysis import build_segmentor, load_config
from mmseg_didb.analysis.benchmark import make_batch
from mmseg_didb.analysis.gradients import sign_gradient_coverage
from mmseg_didb.binary import (ElasticSign, ElasticUnsigned, RSign,
                               RunningMagnitude, grs_loss)

torch.set_num_threads(1)
init_default_scope('mmseg')
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize('config', ['didb_swin_t_ade20k.py',
                                    'didb_deit_s_ade20k.py'])
def test_every_sign_passes_gradient_on_the_full_configs(config):
    """At init, every activation binarizer of the full ADE20K models lets at
    least 20% of its input elements through its gradient window."""
    torch.manual_seed(0)
    cfg = load_config(str(REPO / 'configs' / config), {
        'model.backbone.init_cfg': None,
        # stochastic depth drops whole branches: not what is measured here
        'model.backbone.drop_path_rate': 0.0,
    })
    model = build_segmentor(cfg)
    inputs, samples = make_batch(2, (128, 128), 150, torch.device('cpu'))
    coverage = sign_gradient_coverage(model, inputs, samples)
    assert len(coverage) > 150
    low = {k: v for k, v in coverage.items() if v is None or v < 0.2}
    assert not low, f'binarizers passing < 20% of their input: {low}'


def test_deit_neck_norm_follows_norm_cfg():
    cfg = load_config(str(REPO / 'configs' / 'didb_deit_s_ade20k.py'))
    assert cfg.model.neck.norm_cfg['type'] == 'SyncBN'
    neck = MODELS.build(dict(cfg.model.neck, in_channels=[8, 8],
                             out_channels=8, scales=[2, 1]))
    norms = [u.norm for u in list(neck.lateral_convs) + list(neck.convs)]
    assert all(isinstance(n, torch.nn.SyncBatchNorm) for n in norms)


def tiny_segmentor(preset, **kwargs):
    return shared_tiny_segmentor(preset, head='fcn', embed_dims=16,
                                 **kwargs)


def test_grs_is_switched_by_the_preset():
    inputs, samples = make_batch(2, (32, 32), 4, torch.device('cpu'))
    MessageHub.get_current_instance().update_info('iter', 0)
    # the binaryvit row has grs=True: the loss is there without a grs dict
    model = MODELS.build(tiny_segmentor('binaryvit'))
    losses = model.loss(inputs, samples)
    assert 'loss_grs' in losses
    reg = grs_loss([model.backbone, model.decode_head])
    torch.testing.assert_close(losses['grs_reg'], reg.detach())
    # the same preset with grs off, or react: no GRS term
    off = MODELS.build(tiny_segmentor(
        dict(name='binaryvit', grs=False)))
    assert 'loss_grs' not in off.loss(inputs, samples)
    # a grs schedule without a preset asking for it is a config error
    with pytest.raises(ValueError, match='grs=True'):
        MODELS.build(tiny_segmentor('react', grs=dict(weight=1.0,
                                                      warmup_iters=0)))
    # the schedule sets the weight: at iteration 5 of a 10-iteration ramp
    ramp = MODELS.build(tiny_segmentor('binaryvit',
                                       grs=dict(weight=2.0, warmup_iters=10)))
    MessageHub.get_current_instance().update_info('iter', 5)
    out = ramp.loss(inputs, samples)
    torch.testing.assert_close(out['loss_grs'], out['grs_reg'] * 1.0)
    MessageHub.get_current_instance().update_info('iter', 0)


def test_running_magnitude_scales_by_an_ema_of_mean_abs():
    m = RunningMagnitude(2, channel_dim=1, momentum=0.5)
    x1 = torch.tensor([[[[2.0, -2.0]], [[8.0, 0.0]]]])  # mean|x|: 2, 4
    y = m(x1)  # first batch initialises
    torch.testing.assert_close(m.magnitude, torch.tensor([2.0, 4.0]))
    torch.testing.assert_close(y, x1 / torch.tensor([2.0, 4.0]).view(
        1, 2, 1, 1))
    m(torch.tensor([[[[4.0, 4.0]], [[0.0, 0.0]]]]))  # mean|x|: 4, 0
    torch.testing.assert_close(m.magnitude, torch.tensor([3.0, 2.0]))
    m.eval()  # inference uses the running value and does not update it
    y = m(x1)
    torch.testing.assert_close(m.magnitude, torch.tensor([3.0, 2.0]))
    torch.testing.assert_close(y, x1 / torch.tensor([3.0, 2.0]).view(
        1, 2, 1, 1))
    # sign(x / m + b): a binarizer with input_scale sees the scaled input
    q = RSign(2, channel_dim=1, input_scale=True).eval()
    q.input_scale.load_state_dict(m.state_dict())
    with torch.no_grad():
        q.bias.copy_(torch.tensor([-0.5, 0.1]))
    want = torch.where(x1 / torch.tensor([3.0, 2.0]).view(1, 2, 1, 1) +
                       q.bias.view(1, 2, 1, 1) >= 0, 1.0, -1.0)
    assert torch.equal(q(x1), want)


def test_positive_scales_load_checkpoints_of_the_former_parameter():
    old = {'alpha': torch.tensor([0.02])}
    q = ElasticUnsigned()
    q.load_state_dict(old)
    torch.testing.assert_close(q.alpha.detach(), torch.tensor([0.02]))
    assert 'log_alpha' in q.state_dict() and 'alpha' not in q.state_dict()
    e = ElasticSign(3)
    e.load_state_dict({'alpha': torch.tensor([1.5]),
                       'bias': torch.zeros(3),
                       'initialized': torch.tensor(1, dtype=torch.uint8)})
    torch.testing.assert_close(e.alpha.detach(), torch.tensor([1.5]))
    # an optimizer step can shrink alpha but never past zero
    opt = torch.optim.SGD([e.log_alpha], lr=100.0)
    x = torch.randn(4, 3, requires_grad=True)
    e(x).sum().backward()
    opt.step()
    assert float(e.alpha) > 0


def test_didb_start_values_are_configurable_from_the_backbone():
    from mmseg_didb.models.backbones import DIDBSwin, DIDBViT
    cfg = dict(prob_scale_init=0.005, diba_scale_init=0.5,
               diba_local_init=0.0)
    swin = DIDBSwin(preset='didb', embed_dims=16, depths=(1, 1),
                    num_heads=(1, 2), window_size=4, pretrain_img_size=32,
                    out_indices=(0, 1), attn_cfg=cfg)
    vit = DIDBViT(preset='didb', embed_dims=16, num_layers=1, num_heads=2,
                  img_size=32, patch_size=8, attn_cfg=cfg)
    for attn in (swin.layers[1].blocks[0].attn, vit.layers[0].attn):
        torch.testing.assert_close(attn.attn_quant.alpha.detach(),
                                   torch.tensor([0.005]))
        assert torch.all(attn.aggregation.shortcut_scale == 0.5)
        assert torch.all(attn.aggregation.local_scale == 0.0)
    # defaults: a = 1/N keys (16 for a 4x4 window), l_s = 1, l_l = 0.1
    plain = DIDBSwin(preset='didb', embed_dims=16, depths=(1, 1),
                     num_heads=(1, 2), window_size=4, pretrain_img_size=32,
                     out_indices=(0, 1))
    attn = plain.layers[0].blocks[0].attn
    torch.testing.assert_close(attn.attn_quant.alpha.detach(),
                               torch.tensor([1 / 16]))
    assert torch.all(attn.aggregation.shortcut_scale == 1.0)
    torch.testing.assert_close(attn.aggregation.local_scale.detach(),
                               torch.full((16, ), 0.1))
