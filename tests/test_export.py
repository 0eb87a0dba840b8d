"""Packed 1-bit export: bit packing, exact reload, file size."""
import os
import warnings

import mmseg_didb  # noqa: F401  (first: installs the mmcv-lite shims)
import pytest
import torch
import torch.nn as nn
from mmengine.config import ConfigDict
from mmengine.registry import init_default_scope
from mmseg.registry import MODELS

from mmseg_didb.analysis.complexity import analysis_view
from mmseg_didb.analysis.export import (FrozenScaleWeight, binarized,
                                        build_from_packed, load_packed,
                                        pack_model, pack_signs, read_packed,
                                        save_packed, unpack_signs)
from mmseg_didb.binary.layers import BinaryConv2d, BinaryLinear
from mmseg_didb.binary.quantizers import (ApproxSign, BWNWeight, ElasticSign,
                                          PWSWeight, ReActWeight, RSign,
                                          SignWeight)
from conftest import tiny_segmentor

torch.set_num_threads(1)


class TinyBinary(nn.Module):
    """Every weight binarizer of the toolkit, plus FP layers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = BinaryConv2d(3, 8, 3, padding=1,
                                 weight_quantizer=SignWeight(),
                                 input_quantizer=RSign(3, channel_dim=1))
        self.bn = nn.BatchNorm2d(8)
        self.a = BinaryLinear(8, 16, weight_quantizer=ReActWeight(),
                              input_quantizer=RSign(8))
        self.b = BinaryLinear(16, 16, weight_quantizer=BWNWeight(),
                              input_quantizer=ElasticSign(16))
        self.c = BinaryLinear(16, 16, weight_quantizer=PWSWeight(),
                              input_quantizer=ApproxSign())
        self.d = BinaryLinear(16, 16)  # binary layer class, FP (no quantizer)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = self.bn(self.conv(x)).flatten(2).transpose(1, 2)
        return self.head(self.d(self.c(self.b(self.a(x)))))


def trained_tiny(seed: int = 0) -> TinyBinary:
    torch.manual_seed(seed)
    model = TinyBinary()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.train()
    model(torch.randn(4, 3, 6, 6))  # BN stats, lazy scales
    return model.eval()


def test_pack_unpack_roundtrip():
    pattern = torch.rand(5, 7, 3) > 0.5
    bits = pack_signs(pattern)
    assert bits.dtype == torch.uint8 and bits.numel() == -(-105 // 8)
    signs = unpack_signs(bits, (5, 7, 3))
    assert torch.equal(signs > 0, pattern)
    assert set(signs.unique().tolist()) == {-1.0, 1.0}


def test_tiny_binary_reload_equal(tmp_path):
    model = trained_tiny()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        ref = model(x)
    path = str(tmp_path / 'packed.pth')
    packed = save_packed(model, path)
    assert sorted(packed['binary']) == ['a.weight', 'b.weight', 'c.weight',
                                        'conv.weight']
    assert 'd.weight' in packed['fp'] and 'a.weight' not in packed['fp']
    fresh = TinyBinary()
    load_packed(fresh, path)
    fresh.eval()
    with torch.no_grad():
        out = fresh(x)
    assert torch.equal(out, ref)
    # binary weights are identical; latent FP weights are not recovered
    for name in ('conv', 'a', 'b', 'c'):
        src, dst = getattr(model, name), getattr(fresh, name)
        assert torch.equal(dst.quantized_weight(), src.quantized_weight())
    assert not torch.equal(fresh.a.weight, model.a.weight)
    # FP parts are exact
    assert torch.equal(fresh.head.weight, model.head.weight)
    assert torch.equal(fresh.bn.running_var, model.bn.running_var)


def test_frozen_scale_only_when_needed():
    """Scales independent of W (learnable PWS alpha) need no frozen copy;
    any frozen quantizer reproduces the stored binary weight exactly."""
    model = trained_tiny(1)
    fresh = TinyBinary()
    load_packed(fresh, pack_model(model))
    assert isinstance(fresh.c.weight_quantizer, PWSWeight)
    for name in ('conv', 'a', 'b'):
        q = getattr(fresh, name).weight_quantizer
        w = getattr(fresh, name).weight
        ref = getattr(model, name)
        assert torch.equal(binarized(q, w), binarized(ref.weight_quantizer,
                                                       ref.weight))
        if isinstance(q, FrozenScaleWeight):
            assert q.kind == 'weight' and q.enabled


def test_disabled_weight_quantizer_is_stored_fp():
    model = trained_tiny()
    model.a.weight_quantizer.enabled = False
    packed = pack_model(model)
    assert 'a.weight' not in packed['binary']
    assert torch.equal(packed['fp']['a.weight'], model.a.weight)


def test_size_ratio_1024_linear(tmp_path):
    layer = BinaryLinear(1024, 1024, weight_quantizer=ReActWeight(),
                         input_quantizer=RSign(1024))
    packed_path = str(tmp_path / 'packed.pth')
    fp_path = str(tmp_path / 'fp32.pth')
    save_packed(layer, packed_path)
    torch.save(layer.state_dict(), fp_path)
    ratio = os.path.getsize(fp_path) / os.path.getsize(packed_path)
    assert ratio >= 25, ratio
    fresh = BinaryLinear(1024, 1024, weight_quantizer=ReActWeight(),
                         input_quantizer=RSign(1024))
    load_packed(fresh, packed_path)
    assert torch.equal(fresh.quantized_weight(), layer.quantized_weight())


def test_wrong_model_and_bad_file(tmp_path):
    path = str(tmp_path / 'p.pth')
    save_packed(trained_tiny(), path)
    other = nn.Sequential(nn.Linear(3, 3))
    with pytest.raises(KeyError, match='config'):
        load_packed(other, path)
    torch.save({'state_dict': {}}, str(tmp_path / 'x.pth'))
    with pytest.raises(ValueError, match='export_binary'):
        read_packed(str(tmp_path / 'x.pth'))


def tiny_swin_cfg() -> dict:
    return tiny_segmentor('didb', head='fcn', embed_dims=16,
                          test_cfg=dict(mode='whole'))


def test_tiny_didb_swin_reload_equal(tmp_path):
    init_default_scope('mmseg')
    cfg = ConfigDict(tiny_swin_cfg())
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        model = MODELS.build(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.train()
    analysis_view(model)(torch.randn(2, 3, 32, 32))  # BN stats, lazy scales
    model.eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = analysis_view(model)(x)
    path = str(tmp_path / 'swin.pth')
    config_text = ('default_scope = "mmseg"\n'
                   f'model = {tiny_swin_cfg()!r}\n')
    packed = save_packed(model, path, config=config_text)
    assert len(packed['binary']) > 10
    restored = build_from_packed(path)
    with torch.no_grad():
        out = analysis_view(restored)(x)
    assert torch.equal(out, ref)


def test_export_tool(tmp_path):
    """tools/export_binary.py: config + checkpoint -> packed file that reloads
    to identical outputs, and a smaller file than the FP32 state dict."""
    init_default_scope('mmseg')
    cfg_path = tmp_path / 'tiny.py'
    cfg_path.write_text('default_scope = "mmseg"\n'
                        f'model = {tiny_swin_cfg()!r}\n')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        model = MODELS.build(ConfigDict(tiny_swin_cfg()))
    model.train()
    analysis_view(model)(torch.randn(2, 3, 32, 32))
    ckpt = str(tmp_path / 'ckpt.pth')
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, ckpt)
    from tools import export_binary
    out = export_binary.main([str(cfg_path), ckpt, str(tmp_path / 'p.pth'),
                              '--verify-shape', '32', '32'])
    assert out['outputs_equal'] is True
    assert out['ratio_vs_fp32'] > 1
    assert out['binary_layers'] > 10
    with pytest.raises(FileNotFoundError):
        export_binary.main([str(cfg_path), str(tmp_path / 'missing.pth'),
                            str(tmp_path / 'q.pth')])
