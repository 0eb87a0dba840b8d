"""Training-step and inference speed and peak memory, model vs FP counterpart.

Usage::

    python tools/analysis/benchmark.py CONFIG [--vs auto|mmseg|none|CONFIG]
        [--shape H W]
        [--batch-size N] [--warmup N] [--repeats N] [--device cpu|cuda]
        [--threads N] [--json [PATH]]
    python tools/analysis/benchmark.py CONFIG --packed [--shape 512 512]
        [--threads-list 1 0] [--repeats N]
    python tools/analysis/benchmark.py CONFIG --compile --warmup 2 [--vs none]

``--packed``: end-to-end inference of the bit-packed model
(:func:`mmseg_didb.deploy.convert_to_packed`: XNOR-popcount kernels for every
binary linear, conv and attention matmul) against its FP counterpart, one
image, at each ``--threads-list`` value (0 = all cores), with peak memory
and a per-stage breakdown (backbone stages, neck, head; binary kernels vs FP
glue) of each model.

Both models are built, timed and measured in the same process, one after the
other (the FP one last), on random data: ``train`` is a full optimisation step
(forward + loss + backward + AdamW step), ``infer`` is ``predict`` without
gradients. Medians over ``--repeats`` after ``--warmup`` iterations, peak
memory above the pre-build baseline, and the ratio model / FP are printed. On CPU each
model and phase runs in a fresh child process so that peak resident memory is
not inflated by earlier work (``--no-isolate`` to disable). CUDA is
used when available unless ``--device cpu``. The FP counterpart defaults to the
same config with every ``preset`` set to ``'fp'``. ``--compile`` adds the
model once more with its training step run through ``torch.compile`` (as
mmengine's ``compile=True``; its ``--warmup`` steps, at least 2, compile,
their times are in the JSON as ``warmup_s``; inference stays eager).
"""
import argparse
import json
import os
import os.path as osp
import sys

import torch

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), '..', '..')))

from mmseg_didb.analysis import (build_segmentor,  # noqa: E402
                                 comparison_config, load_config)
from mmseg_didb.analysis.benchmark import (  # noqa: E402
    benchmark_isolated, benchmark_model, describe_device, format_results,
    results_dict)
from mmseg_didb.analysis.stage_timer import format_breakdown  # noqa: E402
from mmseg_didb.engine.allocator import (  # noqa: E402
    check_mmap_threshold, set_malloc_mmap_threshold)
from mmseg_didb.analysis.cli import (add_model_args,  # noqa: E402
                                     check_model_args)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_model_args(
        parser,
        vs_help="FP counterpart config; 'auto' (default) sets every preset "
        "to 'fp'; 'mmseg' adds mmseg's own stock FP config of the same "
        "architecture (Swin-T / DeiT-S UPerNet, from its installed package) "
        "to 'auto'; 'none' benchmarks the model alone",
        json_help='write JSON (stdout if no PATH)')
    parser.add_argument(
        '--batch-size', type=int, default=None,
        help='images per step (default 2, as per GPU in the configs; the PPM '
        'BatchNorm of UPerHead needs >= 2 in training; 1 with --packed)')
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--device', default=None,
                        help='cpu or cuda (default: cuda when available)')
    parser.add_argument('--phases', nargs='+', default=['train', 'infer'],
                        choices=['train', 'infer'])
    parser.add_argument(
        '--packed', action='store_true',
        help='inference of the bit-packed model vs the FP counterpart, one '
        'image, at each --threads-list value, with a per-stage breakdown')
    parser.add_argument(
        '--threads-list', type=int, nargs='+', default=[1, 0],
        help='thread counts of --packed (0 = all cores; default 1 0)')
    parser.add_argument(
        '--compile', action='store_true',
        help='add the model with its training step (loss and backward; the '
        'optimizer step eager) run through torch.compile as a second row')
    parser.add_argument(
        '--mmap-threshold', type=int, default=None, metavar='BYTES',
        help="fix the C allocator's (glibc) mmap threshold in every "
        'benchmarked process, as CPUAllocatorHook does in training, e.g. '
        '131072 (default: the allocator as it is)')
    parser.add_argument(
        '--no-isolate', action='store_true',
        help='on CPU, run everything in this process (default: each model '
        'and phase in a fresh child process, for clean peak-RSS numbers)')
    args = parser.parse_args(argv)
    check_model_args(parser, args)
    if args.packed:
        args.phases = ['infer']
    if args.batch_size is None:
        args.batch_size = 1 if args.packed else 2
    if args.repeats < 1 or args.warmup < 0 or args.batch_size < 1:
        parser.error('--repeats and --batch-size must be >= 1, --warmup >= 0')
    if args.mmap_threshold is not None:
        try:
            check_mmap_threshold(args.mmap_threshold, '--mmap-threshold')
        except ValueError as err:
            parser.error(f'{err} (e.g. 131072)')
    if args.compile and args.warmup < 2:
        parser.error('--compile needs --warmup >= 2: the first two steps '
                     'compile')
    if args.compile and args.packed:
        parser.error('--compile times the training model; it does not apply '
                     'to --packed')
    if args.device == 'cuda' and not torch.cuda.is_available():
        parser.error('--device cuda but no CUDA device is available')
    return args


def run_models(args, models, device, threads):
    """Benchmark every (name, config) in this process or isolated."""
    shape = tuple(args.shape)
    results = []
    common = dict(shape=shape, batch_size=args.batch_size,
                  warmup=args.warmup, repeats=args.repeats, device=device,
                  phases=tuple(args.phases), packed=args.packed)
    for name, model_cfg, extra in models:
        kwargs = dict(common, **extra)
        if device == 'cpu' and not args.no_isolate:
            results.append(benchmark_isolated(
                model_cfg, name, threads=threads,
                mmap_threshold=args.mmap_threshold, **kwargs))
        else:
            torch.set_num_threads(threads)
            results.append(benchmark_model(
                lambda c=model_cfg: build_segmentor(c), name, **kwargs))
    return results


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    described = describe_device(device)
    if args.mmap_threshold is not None:
        described += f', malloc mmap threshold {args.mmap_threshold} bytes'
        if device != 'cpu' or args.no_isolate:  # every row in this process
            set_malloc_mmap_threshold(args.mmap_threshold)
    cfg = load_config(args.config, args.cfg_options)
    name = osp.splitext(osp.basename(args.config))[0]
    models = [(name + (' (packed)' if args.packed else ''), cfg, {})]
    if args.compile:
        models.append((name + ' (torch.compile)', cfg, dict(compile=True)))
    # --vs mmseg: the derived FP counterpart and mmseg's stock config
    for vs_name in (['auto', 'mmseg'] if args.vs == 'mmseg' else [args.vs]):
        vs = comparison_config(cfg, vs_name, args.cfg_options)
        if vs is not None:
            label = {'auto': 'fp (preset=fp)', 'mmseg': 'mmseg stock FP'}.get(
                vs_name, osp.splitext(osp.basename(vs_name))[0])
            models.append((label, vs, {}))
    shape = tuple(args.shape)
    thread_counts = ([t or (os.cpu_count() or 1) for t in args.threads_list]
                     if args.packed else [torch.get_num_threads()])
    out = dict(device=described, shape=list(shape),
               batch_size=args.batch_size, warmup=args.warmup,
               repeats=args.repeats, runs=[])
    for threads in thread_counts:
        results = run_models(args, models, device, threads)
        out['runs'].append(dict(threads=threads,
                                results=results_dict(results)))
        if args.json == '-':
            continue
        print(format_results(results, out['device'], shape,
                             args.batch_size, threads))
        for r in results:
            if r.breakdown is not None:
                print(format_breakdown(r))
        print()
    if len(thread_counts) == 1:  # the single-run layout of earlier versions
        out.update(threads=thread_counts[0], results=out['runs'][0]['results'])
    if args.json == '-':
        print(json.dumps(out, indent=2))
    elif args.json:
        with open(args.json, 'w') as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == '__main__':
    main()
