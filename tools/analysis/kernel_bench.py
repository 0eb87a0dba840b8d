"""Packed binary layers vs FP32 ``F.linear`` / ``F.conv2d``, per layer shape.

Usage::

    python tools/analysis/kernel_bench.py [--threads 1 0] [--repeats 5]
        [--only linear|conv] [--quick] [--json PATH]

For every binary linear and conv shape of the fully binary Swin-T UPerNet at
512x512 (configs/didb_swin_t_ade20k.py: the backbone's binary linears per
stage, the patch merging reductions, the decode head's 1x1 and 3x3 convs at
1/4 to 1/32 resolution), one input is timed through

* the FP32 layer (``F.linear`` / ``F.conv2d`` with bias, oneDNN / MKL), and
* the packed layer (:class:`mmseg_didb.deploy.PackedBinaryLinear` /
  :class:`~mmseg_didb.deploy.PackedBinaryConv2d` built from a ``didb``
  preset binary layer: binarize-and-pack of the input, XNOR-popcount kernel,
  fused scale and bias),

in the same run, at each ``--threads`` value (0 = all cores). Medians over
``--repeats`` after one warm-up. The packed output is checked against the
fake-quantized layer's on the same input.
"""
import argparse
import json
import os
import os.path as osp
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), '..', '..')))

from mmseg_didb.binary import BinaryConv2d, BinaryLinear, resolve_preset  # noqa
from mmseg_didb.deploy import (PackedBinaryConv2d,  # noqa: E402
                               PackedBinaryLinear, kernel_variant)

# (name, tokens M, in K, out N): Swin-T at 512x512, per stage
SWIN_T = [(96, 128), (192, 64), (384, 32), (768, 16)]


def linear_shapes():
    out = []
    for i, (c, s) in enumerate(SWIN_T):
        m = s * s
        out.append((f'stage{i + 1} q/k/v/proj {c}->{c}', m, c, c))
        out.append((f'stage{i + 1} fc1 {c}->{4 * c}', m, c, 4 * c))
        out.append((f'stage{i + 1} fc2 {4 * c}->{c}', m, 4 * c, c))
        if i:
            prev = SWIN_T[i - 1][0]
            out.append((f'merge{i} {4 * prev}->{c}', m, 4 * prev, c))
    return out


def conv_shapes():
    # (name, C_in, C_out, kernel, H) of UPerHead(channels=512)
    out = []
    for c, s in SWIN_T[:3]:
        out.append((f'lateral 1x1 {c}->512 @{s}', c, 512, 1, s))
    for s in (1, 2, 3, 6):
        out.append((f'ppm 1x1 768->512 @{s}', 768, 512, 1, s))
    out.append(('bottleneck 3x3 2816->512 @16', 2816, 512, 3, 16))
    for _, s in SWIN_T[:3]:
        out.append((f'fpn 3x3 512->512 @{s}', 512, 512, 3, s))
    out.append(('fpn_bottleneck 3x3 2048->512 @128', 2048, 512, 3, 128))
    return out


def timeit(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def bench_linear(name, m, k, n, repeats):
    preset = resolve_preset('didb')
    layer = BinaryLinear(k, n, preset=preset).eval()
    with torch.no_grad():
        layer.input_quantizer.bias.uniform_(-0.2, 0.2)
    packed = PackedBinaryLinear.from_binary(layer)
    x = torch.randn(m, k)
    w, b = layer.weight.detach(), layer.bias.detach()
    with torch.no_grad():
        err = (packed(x) - layer(x)).abs().max().item()
        t_fp = timeit(lambda: F.linear(x, w, b), repeats)
        t_bin = timeit(lambda: packed(x), repeats)
    return dict(name=name, kind='linear', shape=[m, k, n], fp_s=t_fp,
                packed_s=t_bin, speedup=t_fp / t_bin, max_abs_diff=err,
                macs=m * k * n)


def bench_conv(name, c, o, ks, s, repeats):
    preset = resolve_preset('didb')
    pad = ks // 2
    layer = BinaryConv2d(c, o, ks, padding=pad, bias=False,
                         weight_quantizer=preset.weight_quantizer(),
                         input_quantizer=preset.act_quantizer(
                             c, 1, input_scale=True)).eval()
    x = torch.randn(1, c, s, s)
    with torch.no_grad():
        layer.input_quantizer.bias.uniform_(-0.2, 0.2)
        layer(x)  # initialise the running input magnitude
    packed = PackedBinaryConv2d.from_binary(layer)
    w = layer.weight.detach()
    with torch.no_grad():
        err = (packed(x) - layer(x)).abs().max().item()
        t_fp = timeit(lambda: F.conv2d(x, w, None, 1, pad), repeats)
        t_bin = timeit(lambda: packed(x), repeats)
    return dict(name=name, kind='conv', shape=[c, o, ks, s], fp_s=t_fp,
                packed_s=t_bin, speedup=t_fp / t_bin, max_abs_diff=err,
                macs=c * o * ks * ks * s * s)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--threads', type=int, nargs='+', default=[1, 0],
                        help='thread counts to run (0 = all cores)')
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--only', choices=['linear', 'conv'])
    parser.add_argument('--quick', action='store_true',
                        help='skip the largest conv (2048->512 at 128x128)')
    parser.add_argument('--json', default=None, help='write results here')
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    results = []
    cpu = 'cpu'
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next(line.split(':', 1)[1].strip() for line in f
                       if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    print(f'CPU: {cpu} ({cores} cores); kernels: {kernel_variant()}; '
          f'torch {torch.__version__}')
    for th in args.threads:
        threads = th or cores
        torch.set_num_threads(threads)
        print(f'\n== {threads} thread(s)')
        print(f"{'layer':40s} {'GMAC':>7s} {'FP32 ms':>9s} {'packed ms':>10s}"
              f" {'speedup':>8s} {'max|diff|':>10s}")
        torch.manual_seed(0)
        jobs = []
        if args.only in (None, 'linear'):
            jobs += [('linear', s) for s in linear_shapes()]
        if args.only in (None, 'conv'):
            jobs += [('conv', s) for s in conv_shapes()
                     if not (args.quick and s[1] == 2048)]
        for kind, spec in jobs:
            if kind == 'linear':
                r = bench_linear(*spec, repeats=args.repeats)
            else:
                name, c, o, ks, s = spec
                r = bench_conv(name, c, o, ks, s,
                               repeats=max(1, args.repeats // (
                                   3 if c * s * s > 10**7 else 1)))
            r['threads'] = threads
            results.append(r)
            print(f"{r['name']:40s} {r['macs'] / 1e9:7.3f} "
                  f"{r['fp_s'] * 1e3:9.2f} {r['packed_s'] * 1e3:10.2f} "
                  f"{r['speedup']:7.1f}x {r['max_abs_diff']:10.2e}",
                  flush=True)
        sub = [r for r in results if r['threads'] == threads]
        fp_total = sum(r['fp_s'] for r in sub)
        bin_total = sum(r['packed_s'] for r in sub)
        print(f"{'all shapes above (sum)':40s} {'':7s} {fp_total * 1e3:9.1f}"
              f" {bin_total * 1e3:10.1f} {fp_total / bin_total:7.1f}x")
        print(f"min speedup {min(r['speedup'] for r in sub):.1f}x, median "
              f"{statistics.median(r['speedup'] for r in sub):.1f}x")
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(dict(cpu=cpu, cores=cores, kernels=kernel_variant(),
                           torch=torch.__version__, results=results), f,
                      indent=2)


if __name__ == '__main__':
    main()
