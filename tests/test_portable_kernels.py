"""The portable path of the bit-packed kernels on ARM: tests/csrc/
kernel_check.cpp (the kernels of mmseg_didb/deploy/csrc on named arrays) is
built for this machine and, with Debian's cross compiler, for aarch64, and
run under qemu-user; both must give the results of the package's kernels
(the PyTorch reference and the native extension), bit for bit. Correctness
only: nothing is timed."""
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT
from kernel_variants import variant
from mmseg_didb.binary.shortcuts import ChannelShortcut
from mmseg_didb.deploy import kernels, pack_signs
from mmseg_didb.deploy.kernels import UnitEpilogue, _pack_rows

CSRC = REPO_ROOT / 'mmseg_didb' / 'deploy' / 'csrc'
SOURCE = REPO_ROOT / 'tests' / 'csrc' / 'kernel_check.cpp'
FLAGS = ['-O2', '-std=c++17', '-ffp-contract=off', '-fno-strict-aliasing',
         f'-I{CSRC}']
CROSS = 'aarch64-linux-gnu-g++'
QEMU = next((q for q in ('qemu-aarch64', 'qemu-aarch64-static')
             if shutil.which(q)), None)
DTYPES = {np.dtype(np.float32): 0, np.dtype(np.int64): 1,
          np.dtype(np.int32): 2, np.dtype(np.float64): 3}
NP = {v: k for k, v in DTYPES.items()}


def write_arrays(path: Path, arrays: dict) -> None:
    with open(path, 'wb') as f:
        for name, a in arrays.items():
            a = np.ascontiguousarray(a)
            raw = name.encode()
            f.write(struct.pack('<I', len(raw)) + raw)
            f.write(struct.pack('<BI', DTYPES[a.dtype], a.ndim))
            f.write(struct.pack(f'<{a.ndim}q', *a.shape))
            f.write(a.tobytes())


def read_arrays(path: Path) -> dict:
    out, data, i = {}, path.read_bytes(), 0
    while i < len(data):
        (n, ), i = struct.unpack_from('<I', data, i), i + 4
        name, i = data[i:i + n].decode(), i + n
        dtype, ndim = struct.unpack_from('<BI', data, i)
        i += 5
        shape = struct.unpack_from(f'<{ndim}q', data, i)
        i += 8 * ndim
        count = int(np.prod(shape))
        size = count * NP[dtype].itemsize
        out[name] = np.frombuffer(data[i:i + size], NP[dtype]).reshape(shape)
        i += size
    return out


def cases() -> dict:
    """Inputs of every case of kernel_check.cpp (fixed seed)."""
    rng = np.random.default_rng(0)
    f32 = np.float32
    arrays = {}
    # packing: shift, division by a magnitude, exact zeros, a partial word
    x = rng.standard_normal((5, 70)).astype(f32)
    x[0, :8] = 0
    arrays['pack.x'] = x
    arrays['pack.div'] = rng.uniform(0.5, 2, 70).astype(f32)
    arrays['pack.add'] = rng.uniform(-0.3, 0.3, 70).astype(f32)
    # GEMM: 7 rows of 9 taps x 5 words (a 3x3 conv's implicit rows, some
    # taps in the zero padding) against 11 columns
    m, taps, cw, n = 7, 9, 5, 11
    arrays['gemm.a'] = rng.integers(-2**62, 2**62, (m, taps, cw))
    arrays['gemm.pad'] = (rng.random((m, taps)) < 0.2).astype(np.int32)
    arrays['gemm.b'] = rng.integers(-2**62, 2**62, (n, taps * cw))
    # unit tail: BatchNorm, LayerNorm, uneven group mean, Token RPReLU
    rows, ch, tokens = 12, 40, 6
    arrays['unit.y'] = (rng.standard_normal((rows, ch)) * 3).astype(f32)
    for k in ('bn_scale', 'ln_weight', 'slope'):
        arrays[f'unit.{k}'] = rng.uniform(0.2, 1.5, ch).astype(f32)
    for k in ('bn_shift', 'ln_bias', 'gamma', 'zeta'):
        arrays[f'unit.{k}'] = rng.uniform(-0.5, 0.5, ch).astype(f32)
    arrays['unit.res'] = rng.standard_normal((rows, 110)).astype(f32)
    arrays['unit.res_count'] = ChannelShortcut(110, ch).count.numpy()
    arrays['unit.token_gamma'] = rng.standard_normal(tokens).astype(f32)
    arrays['unit.token_zeta'] = rng.standard_normal(tokens).astype(f32)
    return arrays


def attention_case(rng) -> dict:
    """A shifted, padded window attention with HFSC's two branches and both
    DIBA terms: the arguments of the native window_attention."""
    b, h, w, heads, dqk, dv = 2, 9, 10, 2, 32, 32
    n, c = h * w, heads * dv
    words = lambda ch: pack_signs(torch.from_numpy(  # noqa: E731
        rng.standard_normal((b, n, ch)).astype(np.float32)))
    wh = ww = 4
    nwin = -(-h // wh) * -(-w // ww)
    arrays = {'attn.q0': words(heads * dqk), 'attn.k0': words(heads * dqk),
              'attn.q1': words(heads * dqk), 'attn.k1': words(heads * dqk),
              'attn.v': words(c)}
    arrays = {k: v.numpy() for k, v in arrays.items()}
    arrays['attn.shape'] = np.array([2, b, n, 0, h, w, wh, ww, 2, 2, heads,
                                     dqk, dv, 0], np.int64)
    arrays['attn.scalars'] = np.array([1.0, 1.3, dqk**-0.5, 1 / 16, 0.25,
                                       1 / 16, 1.0], np.float64)
    arrays['attn.mix'] = rng.uniform(0.5, 1.5, (heads, 2)).astype(np.float32)
    arrays['attn.bias'] = rng.normal(0, 0.5, (heads, 16, 16)).astype(
        np.float32)
    mask = np.where(rng.random((nwin, 16, 16)) < 0.1, -100.0, 0.0)
    arrays['attn.mask'] = mask.astype(np.float32)
    arrays['attn.diba_s'] = rng.uniform(0.5, 1.5, c).astype(np.float32)
    arrays['attn.diba_l'] = rng.uniform(0.05, 0.2, c).astype(np.float32)
    return arrays


def reference(arrays: dict) -> dict:
    """The package's own kernels on the same inputs."""
    ref = {}
    x = torch.from_numpy(arrays['pack.x'])
    div = torch.from_numpy(arrays['pack.div'])
    add = torch.from_numpy(arrays['pack.add'])
    with variant('pytorch'):
        for key, d, a in (('00', None, None), ('10', div, None),
                          ('01', None, add), ('11', div, add)):
            ref[f'pack.{key}'] = _pack_rows(x, d, a, 1).numpy()
    a = arrays['gemm.a'] * (1 - arrays['gemm.pad'])[..., None]
    a = a.reshape(a.shape[0], -1).view(np.uint8)
    b = arrays['gemm.b'].view(np.uint8)
    bits = lambda t: np.unpackbits(t, axis=-1).astype(np.int64)  # noqa
    ab, bb = bits(a), bits(b)
    ref['gemm.and'] = ab @ bb.T
    ref['gemm.xor'] = ab.sum(1)[:, None] + bb.sum(1)[None] - 2 * ab @ bb.T
    fields = {k[5:]: torch.from_numpy(v) for k, v in arrays.items()
              if k.startswith('unit.') and k != 'unit.y'}
    ref['unit.out'] = UnitEpilogue(**fields).apply(
        torch.from_numpy(arrays['unit.y'])).numpy()
    if 'attn.shape' in arrays and kernels.kernels_available():
        s = arrays['attn.shape']
        sc = arrays['attn.scalars']
        t = lambda k: torch.from_numpy(arrays[k])  # noqa: E731
        with variant('generic'):
            ref['attn.out'] = kernels._C.window_attention(
                [t('attn.q0'), t('attn.q1')], [t('attn.k0'), t('attn.k1')],
                t('attn.v'), int(s[10]), int(s[11]), int(s[12]), int(s[4]),
                int(s[5]), int(s[3]), int(s[6]), int(s[7]), int(s[8]),
                int(s[9]), [float(sc[0]), float(sc[1])], float(sc[2]),
                t('attn.mix'), t('attn.bias'), t('attn.mask'), int(s[13]),
                float(sc[3]), float(sc[4]), float(sc[5]), float(sc[6]),
                t('attn.diba_s'), t('attn.diba_l')).numpy()
    return ref


def build_and_run(compiler, binary: Path, inputs: Path, output: Path,
                  runner=()) -> dict:
    extra = ['-static'] if runner else []
    subprocess.run([compiler, *FLAGS, *extra, str(SOURCE), '-o',
                    str(binary)], check=True, capture_output=True,
                   timeout=600)
    subprocess.run([*runner, str(binary), str(inputs), str(output)],
                   check=True, capture_output=True, timeout=600)
    return read_arrays(output)


@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
    arrays = cases()
    arrays.update(attention_case(np.random.default_rng(1)))
    path = tmp_path_factory.mktemp('kernel_check') / 'in.bin'
    write_arrays(path, arrays)
    return path, arrays


def check(outputs: dict, arrays: dict) -> None:
    ref = reference(arrays)
    for name, want in ref.items():
        got = outputs[name]
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert np.array_equal(got.view(np.uint8), want.view(np.uint8)), (
            f'{name}: {np.abs(got.astype(np.float64) - want).max()}')


def test_portable_kernels_on_this_machine(inputs, tmp_path):
    """The generic path, built natively, computes the package's results
    (and documents the file format the ARM test relies on)."""
    path, arrays = inputs
    out = build_and_run('g++', tmp_path / 'host', path, tmp_path / 'o.bin')
    assert set(out) >= {'pack.11', 'gemm.xor', 'unit.out', 'attn.out'}
    check(out, arrays)


@pytest.mark.skipif(
    shutil.which(CROSS) is None or QEMU is None,
    reason=f'no aarch64 cross compiler ({CROSS}) or qemu-user: '
    'tools/run_tests.sh installs g++-aarch64-linux-gnu and qemu-user from '
    "Debian's packages where apt-get can (tools/setup_cross.sh)")
def test_portable_kernels_on_aarch64_under_qemu(inputs, tmp_path):
    path, arrays = inputs
    out = build_and_run(CROSS, tmp_path / 'arm', path, tmp_path / 'o.bin',
                        runner=(QEMU, ))
    assert 'isa.neon' in out  # it ran the aarch64 build
    check(out, arrays)
    host = build_and_run('g++', tmp_path / 'host', path, tmp_path / 'h.bin')
    for name in host:
        if name.startswith('isa.'):
            continue
        assert np.array_equal(out[name].view(np.uint8),
                              host[name].view(np.uint8)), name
    assert os.path.getsize(tmp_path / 'o.bin') > 0
