"""Bit-packed kernels (every native variant this CPU runs, and the PyTorch
fallback) against a float reference, and the packed layers against the
fake-quantized layers they replace."""
import pytest
import torch
import torch.nn.functional as F

from mmseg_didb.binary.exact import batchnorm_exact
from mmseg_didb.binary import (BinaryConv2d, BinaryLinear, resolve_preset,
                               set_binarization)
from mmseg_didb.binary.quantizers import (ApproxSign, ASMSign, BWNWeight,
                                          ElasticSign, PWSWeight,
                                          ReActWeight, RSign, SignSTE,
                                          SignWeight)
from mmseg_didb.deploy import (PackedBinaryConv2d, PackedBinaryLinear,
                               binary_conv2d, binary_matmul,
                               kernel_variant, kernel_variants,
                               kernels_available, mask_matmul, pack_bits,
                               pack_conv_input, pack_conv_weight, pack_signs,
                               set_kernel_variant, unpack_signs)
from kernel_variants import VARIANTS, variant

torch.set_num_threads(2)


def signs(x):
    return torch.where(x >= 0, 1.0, -1.0).double()


def test_extension_is_built_and_dispatched_at_run_time():
    # the set-up builds the extension; CI must exercise the native kernels
    assert kernels_available(), 'run the set-up: the C++ kernels are missing'
    assert kernel_variant() == kernel_variants()[0]
    assert kernel_variants()[-1] in ('generic', 'neon')
    with variant('pytorch'):
        assert kernel_variant() == 'pytorch' and not kernels_available()
    with pytest.raises(RuntimeError, match='not available'):
        set_kernel_variant('sse9')


@pytest.mark.parametrize('k', [1, 63, 64, 65, 777])
def test_pack_signs_layout_and_padding_bits(k):
    x = torch.randn(3, k)
    x[0, 0] = 0.0  # sign(0) = +1
    x[1, 0] = -0.0
    words = pack_signs(x)
    assert words.dtype == torch.int64 and words.shape == (3, (k + 63) // 64)
    # element k in bit k % 64 of word k // 64, LSB first; padding bits 0
    for r in range(3):
        for j in range(k):
            bit = (int(words[r, j // 64]) >> (j % 64)) & 1
            assert bit == int(x[r, j] >= 0)
        used = k - 64 * (words.shape[1] - 1)
        last = int(words[r, -1]) & ((1 << 64) - 1)
        assert last >> used == 0
    torch.testing.assert_close(unpack_signs(words, k), signs(x).float())
    with variant('pytorch'):
        assert torch.equal(pack_signs(x), words)
    # any axis, non-contiguous input
    y = torch.randn(k, 4, 2).transpose(0, 2)
    assert torch.equal(pack_signs(y, dim=2).movedim(2, -1),
                       pack_signs(y.movedim(2, -1).contiguous()))


@pytest.mark.parametrize('name', VARIANTS)
@pytest.mark.parametrize('k', [1, 63, 64, 65, 777])
def test_binary_and_mask_matmul_match_reference(name, k):
    torch.manual_seed(k)
    for batch, m, n in [((), 1, 1), ((2, ), 9, 7), ((3, 2), 33, 17)]:
        a = torch.randn(*batch, m, k)
        b = torch.randn(*batch, n, k)
        mask = torch.rand(*batch, m, k) > 0.6
        want = signs(a) @ signs(b).transpose(-1, -2)
        want_m = mask.double() @ signs(b).transpose(-1, -2)
        with variant(name):
            pa, pb = pack_signs(a), pack_signs(b)
            got = binary_matmul(pa, pb, k)
            got_m = mask_matmul(pack_bits(mask), pb, k)
            # non-contiguous operands (a transposed view of packed words)
            got_t = binary_matmul(pa.transpose(-1, -2).contiguous()
                                  .transpose(-1, -2), pb, k)
        assert got.dtype == torch.int32
        assert torch.equal(got, want.to(torch.int32))
        assert torch.equal(got_m, want_m.to(torch.int32))
        assert torch.equal(got_t, got)
    with pytest.raises(ValueError, match='does not fit'):
        binary_matmul(pa, pb, k + 64)


@pytest.mark.parametrize('name', VARIANTS)
def test_binary_conv2d_matches_zero_padded_float_conv(name):
    torch.manual_seed(0)
    cases = [  # C, O, kernel, stride, padding, dilation, (H, W), batch
        (3, 5, 3, 1, 1, 1, (7, 9), 2), (70, 8, 3, 2, 1, 1, (9, 8), 1),
        (64, 16, 1, 1, 0, 1, (5, 5), 3), (130, 4, 3, 1, 2, 2, (11, 6), 2),
        (16, 4, 5, 2, 2, 1, (8, 8), 1), (8, 3, 3, 1, 0, 1, (3, 3), 1),
        (200, 6, (1, 3), 1, (0, 1), 1, (6, 13), 2)]
    for c, o, ks, s, p, d, hw, nb in cases:
        ks2 = ks if isinstance(ks, tuple) else (ks, ks)
        p2 = p if isinstance(p, tuple) else (p, p)
        x = torch.randn(nb, c, *hw)
        w = torch.randn(o, c, *ks2)
        scale, bias = torch.rand(o) + 0.5, torch.randn(o)
        want = F.conv2d(signs(x), signs(w), None, s, p2, d).float()
        want = want * scale.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)
        with variant(name):
            xp = pack_conv_input(x)
            wp, wpop = pack_conv_weight(w >= 0)
            got = binary_conv2d(xp, hw, wp, wpop, c, ks2, (s, s), p2, (d, d),
                                scale, bias)
        assert torch.equal(got, want)


@pytest.mark.parametrize('name', VARIANTS)
def test_conv_input_packing_with_divisor_and_shift(name):
    torch.manual_seed(1)
    x = torch.randn(2, 75, 5, 7)  # odd pixel count, channels not /8
    div, add = torch.rand(75) + 0.5, torch.randn(75) * 0.3
    add2 = torch.randn(2, 75) * 0.3
    want = (x / div.view(1, -1, 1, 1) + add.view(1, -1, 1, 1)) >= 0
    want2 = (x + add2.view(2, -1, 1, 1)) >= 0
    with variant(name):
        got = pack_conv_input(x, div, add)
        got2 = pack_conv_input(x, None, add2)
    to_words = lambda b: pack_bits(b.permute(0, 2, 3, 1).reshape(2, 35, 75))
    assert torch.equal(got, to_words(want))
    assert torch.equal(got2, to_words(want2))


ACT = {'ste': SignSTE, 'approx': ApproxSign, 'rsign': RSign,
       'elastic': ElasticSign, 'asm': ASMSign}
WEIGHT = {'sign': SignWeight, 'react': ReActWeight, 'bwn': BWNWeight,
          'pws': PWSWeight}


def randomise(layer, x):
    """Trained-looking binarizer parameters (shifts, scales, statistics)."""
    q = layer.input_quantizer
    with torch.no_grad():
        for name in ('bias', 'k'):
            if hasattr(q, name):
                getattr(q, name).uniform_(-0.3, 0.3)
        layer.train()
        layer(x)  # lazy inits (elastic alpha, running magnitude, PWS)
        layer.eval()
        if hasattr(q, 'log_alpha'):
            q.set_alpha(0.7)
        if layer.bias is not None:
            layer.bias.uniform_(-1, 1)


def check_packed(packed_cls, layer, x, name):
    """The packed layer (kernel variant ``name``) built from the randomised
    fake-quantized ``layer`` gives its outputs on ``x``."""
    randomise(layer, x)
    with variant(name):
        packed = packed_cls.from_binary(layer)
        with torch.no_grad():
            got, want = packed(x), layer(x)
    assert got.shape == want.shape
    assert torch.equal(got, want)  # the exact inference arithmetic


@pytest.mark.parametrize('name', VARIANTS)
@pytest.mark.parametrize('weight', sorted(WEIGHT))
@pytest.mark.parametrize('act', sorted(ACT))
def test_packed_linear_equals_fake_quantized(name, weight, act):
    torch.manual_seed(0)
    layer = BinaryLinear(70, 33, weight_quantizer=weight,
                         input_quantizer=act)
    x = torch.randn(2, 5, 70) * 2
    check_packed(PackedBinaryLinear, layer, x, name)


@pytest.mark.parametrize('name', VARIANTS)
@pytest.mark.parametrize('weight', sorted(WEIGHT))
@pytest.mark.parametrize('act', ['rsign', 'asm', 'elastic', 'ste'])
def test_packed_conv_equals_fake_quantized(name, weight, act):
    torch.manual_seed(0)
    shapes = [  # stride, padding, dilation, kernel, (H, W)
        (1, 1, 1, 3, (9, 7)), (2, 1, 1, 3, (9, 7)), (1, 2, 2, 3, (8, 11)),
        (1, 0, 1, 1, (5, 5)), (2, 0, 1, 3, (10, 10)), (1, 2, 1, 5, (7, 6))]
    for stride, pad, dil, ks, hw in shapes:
        preset = resolve_preset('react', weight=weight, act=act)
        layer = BinaryConv2d(
            66, 12, ks, stride=stride, padding=pad, dilation=dil, bias=True,
            weight_quantizer=preset.weight_quantizer(),
            input_quantizer=preset.act_quantizer(66, 1, input_scale=True))
        x = torch.randn(2, 66, *hw) * 3
        check_packed(PackedBinaryConv2d, layer, x, name)


def test_packed_conv_folds_batchnorm():
    torch.manual_seed(0)
    layer = BinaryConv2d(20, 8, 3, padding=1, bias=False,
                         weight_quantizer='react', input_quantizer='rsign')
    bn = torch.nn.BatchNorm2d(8).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    x = torch.randn(1, 20, 6, 6)
    packed = PackedBinaryConv2d.from_binary(layer.eval())
    packed.fold_bn(bn)
    with torch.no_grad():
        got = packed(x)
        # the BatchNorm runs as y * g + c, as the unit's exact arithmetic
        assert torch.equal(got, batchnorm_exact(layer(x), bn, 1))
        torch.testing.assert_close(got, bn(layer(x)), rtol=1e-5, atol=1e-5)


def test_packed_layers_need_binary_weights_and_inputs():
    layer = BinaryLinear(8, 4, weight_quantizer='react',
                         input_quantizer='rsign')
    set_binarization(layer, activations=False)
    with pytest.raises(ValueError, match='input binarizer'):
        PackedBinaryLinear.from_binary(layer)
    set_binarization(layer, activations=True, weights=False)
    with pytest.raises(ValueError, match='weight binarizer'):
        PackedBinaryLinear.from_binary(layer)
    conv = BinaryConv2d(4, 4, 3, groups=2, weight_quantizer='react',
                        input_quantizer='rsign')
    with pytest.raises(ValueError, match='groups'):
        PackedBinaryConv2d.from_binary(conv)
    packed = PackedBinaryLinear.from_binary(BinaryLinear(
        8, 4, weight_quantizer='react', input_quantizer='rsign'))
    with pytest.raises(ValueError, match='8 input features'):
        packed(torch.randn(2, 7))


def test_without_the_extension_the_pytorch_kernels_serve(tmp_path):
    """MMSEG_DIDB_NO_KERNELS=1 (or a missing build): kernels_available() is
    False and the packed layers still compute the fake-quantized output."""
    import os
    import subprocess
    import sys
    code = '''
import torch
from mmseg_didb.binary import BinaryConv2d
from mmseg_didb.deploy import (PackedBinaryConv2d, kernel_variant,
                               kernels_available, use_native)
assert not kernels_available() and kernel_variant() == 'pytorch'
torch.manual_seed(0)
conv = BinaryConv2d(9, 4, 3, padding=1, weight_quantizer='react',
                    input_quantizer='rsign').eval()
x = torch.randn(1, 9, 6, 5)
packed = PackedBinaryConv2d.from_binary(conv)
with torch.no_grad():
    assert torch.equal(packed(x), conv(x))
try:
    use_native(True)
except RuntimeError as e:
    assert 'not built' in str(e)
else:
    raise AssertionError('use_native(True) must fail without the kernels')
print('ok')
'''
    env = dict(os.environ, MMSEG_DIDB_NO_KERNELS='1')
    # a missing build is simulated by hiding the extension module
    env['PYTHONPATH'] = str(tmp_path)
    (tmp_path / 'sitecustomize.py').write_text(
        'import sys\nsys.modules["mmseg_didb.deploy._C"] = None\n')
    proc = subprocess.run([sys.executable, '-c', code], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith('ok')
