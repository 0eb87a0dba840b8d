"""Params / BOPs / FLOPs / OPs / size accounting (mmseg_didb.analysis)."""
import json
import warnings

import mmseg_didb  # noqa: F401  (first: installs the mmcv-lite shims)
import pytest
import torch
import torch.nn as nn
from mmengine.analysis import get_model_complexity_info
from mmengine.config import Config, ConfigDict
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS

from mmseg_didb.analysis import (analyze_complexity, comparison_config,
                                 format_report, fp_counterpart, load_config,
                                 ratios)
from mmseg_didb.analysis.complexity import analysis_view
from mmseg_didb.binary import set_binarization
from mmseg_didb.binary.layers import BinaryConv2d, BinaryLinear
from mmseg_didb.binary.presets import resolve_preset
from mmseg_didb.binary.quantizers import ReActWeight, RSign
from mmseg_didb.models.layers.didb_attention import DIDBAttention
from conftest import tiny_segmentor

torch.set_num_threads(1)

B, H, W, C, HEADS = 1, 4, 4, 8, 2
N = H * W
D = C // HEADS
LN = 5 * N * C  # mmengine: LayerNorm with affine = 5 FLOPs per element


class Toy(nn.Module):
    """One binary linear, one binary attention, one FP linear."""

    def __init__(self, hfsc=False) -> None:
        super().__init__()
        self.fc_bin = BinaryLinear(C, C, weight_quantizer=ReActWeight(),
                                   input_quantizer=RSign(C))
        preset = resolve_preset('didb', hfsc=hfsc, token_rprelu=False)
        self.attn = DIDBAttention(C, HEADS, preset=preset, grid=(H, W))
        self.fc_fp = nn.Linear(C, 4)

    def forward(self, x):
        return self.fc_fp(self.attn(self.fc_bin(x), (H, W)))


def toy_input():
    return torch.randn(B, N, C)


def test_toy_counts_by_hand():
    model = Toy()
    r = analyze_complexity(model, toy_input(), groups=['fc_bin', 'attn',
                                                       'fc_fp'])
    lin = N * C * C  # one C->C linear on N tokens
    matmul = HEADS * N * N * D  # Q K^T, and Ab V
    g = r.groups
    assert (g['fc_bin'].bops, g['fc_bin'].flops) == (lin, 0)
    assert (g['fc_fp'].bops, g['fc_fp'].flops) == (0, N * C * 4)
    # q, k, v, proj binary linears + Q K^T + Ab V; 4 unit LayerNorms in FP
    assert g['attn'].bops == 4 * lin + 2 * matmul
    assert g['attn'].flops == 4 * LN
    t = r.total
    assert t.bops == 5 * lin + 2 * matmul == 9216
    assert t.flops == N * C * 4 + 4 * LN == 3072
    assert t.ops == 9216 / 64 + 3072 == 3216
    assert t.params_binary == 5 * C * C
    assert t.params == sum(p.numel() for p in model.parameters())
    assert t.scales == 5 * C  # one derived a_r per output row
    assert t.size_bits == 5 * C * C + 32 * (t.params_fp + 5 * C)
    assert r.mmengine_flops == t.bops + t.flops
    kinds = sorted(k for _, k, _ in r.layers)
    assert kinds == ['BinaryLinear'] * 5 + ['binary matmul'] * 2
    # each product is counted in the part that computes it
    matmuls = {n: m for n, k, m in r.layers if k == 'binary matmul'}
    assert matmuls == {'attn.similarity': matmul, 'attn.aggregation': matmul}


def test_toy_hfsc_full_doubles_similarity():
    r = analyze_complexity(Toy(hfsc=True), toy_input())
    lin, matmul = N * C * C, HEADS * N * N * D
    # q_low, k_low, q_high, k_high, v, proj + fc_bin; two Q K^T and one Ab V
    assert r.total.bops == 7 * lin + 3 * matmul
    assert r.total.flops == N * C * 4 + 6 * LN


def test_toy_hfsc_split_costs_one_similarity():
    """Split HFSC halves q/k widths: same BOPs and FLOPs as no HFSC."""
    r = analyze_complexity(Toy(hfsc='split'), toy_input())
    lin, matmul = N * C * C, HEADS * N * N * D
    assert r.total.bops == 5 * lin + 2 * matmul
    assert r.total.flops == N * C * 4 + 4 * LN


def test_binary_weights_off_moves_layers_to_flops():
    """Two-stage stage 1 (FP weights, binary activations): linears are FLOPs,
    the attention matmuls keep binary operands on both sides (BOPs)."""
    model = Toy()
    set_binarization(model, weights=False)
    r = analyze_complexity(model, toy_input())
    lin, matmul = N * C * C, HEADS * N * N * D
    assert r.total.bops == 2 * matmul
    assert r.total.flops == 5 * lin + N * C * 4 + 4 * LN
    assert r.total.params_binary == 0 and r.total.scales == 0


def test_binary_activations_off_is_all_flops():
    model = Toy()
    set_binarization(model, activations=False)
    r = analyze_complexity(model, toy_input())
    lin, matmul = N * C * C, HEADS * N * N * D
    assert r.total.bops == 0
    assert r.total.flops == 5 * lin + 2 * matmul + N * C * 4 + 4 * LN
    # weights are still 1 bit in storage
    assert r.total.params_binary == 5 * C * C


def test_binary_conv_bops():
    conv = BinaryConv2d(4, 8, 3, padding=1, weight_quantizer=ReActWeight(),
                        input_quantizer=RSign(4, channel_dim=1))
    r = analyze_complexity(nn.Sequential(conv), torch.randn(2, 4, 5, 5))
    assert r.total.bops == 2 * 4 * 9 * 8 * 25
    assert r.total.flops == 0
    assert r.total.params_binary == 8 * 4 * 9


# --------------------------------------------------------------- segmentors
def tiny_segmentor_cfg(preset: str) -> dict:
    return tiny_segmentor(preset, head='fcn', embed_dims=16,
                          test_cfg=dict(mode='whole'))


def build(cfg):
    init_default_scope('mmseg')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return MODELS.build(ConfigDict(cfg))


def mmengine_counts(model, x):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        out = get_model_complexity_info(model, inputs=(x, ), show_table=False,
                                        show_arch=False)
    return out['flops'], out['params']


def test_fp_preset_flops_equal_mmengine():
    model = build(tiny_segmentor_cfg('fp'))
    x = torch.rand(1, 3, 32, 32)
    r = analyze_complexity(analysis_view(model), x)
    flops, params = mmengine_counts(model.eval(), x)
    assert r.total.bops == 0
    assert r.total.flops == flops > 0
    assert r.total.params == r.total.params_fp == params
    assert r.total.size_bits == 32 * params


def test_binary_preset_splits_mmengine_total():
    model = build(tiny_segmentor_cfg('didb'))
    x = torch.rand(1, 3, 32, 32)
    shapes = {}

    def hook(m, args):
        shapes[m] = tuple(args[0].shape)

    handles = [m.register_forward_pre_hook(hook) for m in model.modules()
               if isinstance(m, BinaryLinear)]
    r = analyze_complexity(analysis_view(model), x)
    for h in handles:
        h.remove()
    flops, _ = mmengine_counts(model.eval(), x)
    assert r.total.bops > 0
    assert r.total.bops + r.total.flops == flops
    # every binary linear's BOPs = in * out * tokens
    by_name = {n: m for n, m in model.named_modules()}
    linears = [(n, b) for n, k, b in r.layers if k == 'BinaryLinear']
    assert linears
    for name, bops in linears:
        m = by_name[name]
        tokens = int(torch.tensor(shapes[m][:-1]).prod())
        assert bops == tokens * m.in_features * m.out_features, name
    # the binary head's convs are BOPs too, its classifier stays FLOPs
    assert r.groups['decode_head'].bops > 0
    assert r.groups['decode_head'].flops >= 16 * 4 * 4 * 4  # conv_seg 1x1
    text = format_report(r)
    assert 'backbone' in text and 'total' in text


def test_fp_counterpart_config():
    cfg = Config(dict(model=tiny_segmentor_cfg('didb')))
    cfg.model.backbone.preset_overrides = dict(hfsc=False)
    fp = fp_counterpart(cfg)
    assert fp.model.backbone.preset == 'fp'
    assert fp.model.decode_head.preset == 'fp'
    assert fp.model.backbone.preset_overrides == {}
    assert cfg.model.backbone.preset == 'didb'  # input untouched
    with pytest.raises(ValueError, match='--vs'):
        fp_counterpart(dict(model=dict(type='EncoderDecoder')))


def test_load_config_options_and_comparison_config(tmp_path):
    cfg = load_config(dict(model=tiny_segmentor_cfg('didb')),
                      {'model.backbone.preset': 'react'})
    assert cfg.model.backbone.preset == 'react'
    assert comparison_config(cfg, 'none') is None
    assert comparison_config(cfg, 'auto').model.backbone.preset == 'fp'
    vs_path = tmp_path / 'vs.py'
    vs_path.write_text(f'model = {tiny_segmentor_cfg("bnn")!r}\n')
    vs = comparison_config(cfg, str(vs_path),
                           {'model.decode_head.preset': 'fp'})
    assert vs.model.backbone.preset == 'bnn'
    assert vs.model.decode_head.preset == 'fp'
    with pytest.raises(FileNotFoundError, match='does not exist'):
        comparison_config(cfg, str(tmp_path / 'missing.py'))


def test_ratios_and_cli(tmp_path):
    cfg_path = tmp_path / 'tiny.py'
    cfg_path.write_text(
        'default_scope = "mmseg"\n'
        f'model = {tiny_segmentor_cfg("didb")!r}\n')
    from tools.analysis import complexity as tool
    out = tool.main([str(cfg_path), '--shape', '32', '32', '--json',
                     str(tmp_path / 'c.json')])
    data = json.loads((tmp_path / 'c.json').read_text())
    assert data['ratios'] == out['ratios']
    binary, fp = data['model']['total'], data['fp']['total']
    assert fp['bops'] == 0 and binary['bops'] > 0
    assert data['ratios']['ops'] == pytest.approx(fp['ops'] / binary['ops'])
    assert data['ratios']['size'] == pytest.approx(
        fp['size_bits'] / binary['size_bits'])
    # a tiny model is dominated by FP norms/biases, yet 1-bit weights help
    assert data['ratios']['size'] > 1
    assert data['ratios'] == ratios(out_total(data['model']),
                                    out_total(data['fp']))


def out_total(report: dict):
    from mmseg_didb.analysis import Complexity
    t = report['total']
    return Complexity(t['params_binary'], t['params_fp'], t['scales'],
                      t['bops'], t['flops'])
