"""Accuracy benchmark: train variants for several seeds, report mean and std.

Usage::

    python tools/analysis/accuracy_bench.py [--variants fp react didb ...]
        [--seeds 0 1 2] [--jobs N] [--work-dir work_dirs/accuracy_bench]
        [--data-dir data/texture_bench] [--config configs/bench/...]
        [--cfg-options key=value ...] [--list]

Data: a grayscale texture-mosaic build made from scikit-image photographs
(built into ``--data-dir`` on first use). Protocol: stage 0 trains the FP
model once (seed 0); each (variant, seed) then trains the benchmark model
from that checkpoint (mmengine's Runner, one fresh process per run,
``--jobs`` runs at a time with ``cores / jobs`` threads each) and is
evaluated with mmseg's IoUMetric on the validation split. Results:

* ``WORK_DIR/pretrain.json`` and ``WORK_DIR/runs/VARIANT_sSEED.json``: one
  file per run (finished runs are skipped when the benchmark is started again
  with the same settings);
* ``WORK_DIR/results.md``: mean ± sample standard deviation over seeds of
  mIoU and aAcc, the cost per run, the machine;
* ``WORK_DIR/results.png``: bar chart with standard-deviation error bars;
* ``WORK_DIR/results.json``: the aggregated rows.
"""
import argparse
import json
import os
import os.path as osp
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
import multiprocessing as mp

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
sys.path.insert(0, ROOT)
# idle OpenMP threads sleep instead of spinning (a shared machine otherwise
# slows multi-threaded training down many times over)
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

from mmengine.config import DictAction  # noqa: E402

from mmseg_didb.analysis.accuracy import (  # noqa: E402
    MAIN_VARIANTS, VARIANTS, aggregate, bench_spec, fingerprint,
    format_table, load_results, plot_results, pretrain_options, run_one,
    variant_options)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--variants', nargs='+', default=list(MAIN_VARIANTS),
                        help='variants to run (default: the main table); '
                        '--list shows them')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--jobs', type=int, default=1,
                        help='runs at a time (default 1, using every core)')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch threads per run (default cores / jobs)')
    parser.add_argument('--config', default=osp.join(
        ROOT, 'configs', 'bench', 'texture_bench.py'))
    parser.add_argument('--work-dir', default=osp.join(
        ROOT, 'work_dirs', 'accuracy_bench'))
    parser.add_argument('--data-dir', default=osp.join(
        ROOT, 'data', 'texture_bench'))
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        default={}, help='overrides applied to every run')
    parser.add_argument('--dataset', choices=['bench', 'demo'],
                        default='bench',
                        help="data build: 'bench' (default) or 'demo' (the "
                        "demo's, for re-measuring the demo table)")
    parser.add_argument('--scratch', action='store_true',
                        help='no stage 0: every run trains from scratch '
                        '(the demo protocol)')
    parser.add_argument('--report-only', action='store_true',
                        help='only rebuild the table and chart from the '
                        'finished runs')
    parser.add_argument('--list', action='store_true',
                        help='list the variants and exit')
    args = parser.parse_args(argv)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f'unknown variants {unknown}; valid: {sorted(VARIANTS)}')
    return args


def ensure_data(data_dir: str, dataset: str = 'bench') -> dict:
    from mmseg_didb.datasets.texture_maker import build_dataset, is_built
    spec = bench_spec(dataset)
    if not is_built(data_dir, spec):
        print(f'building the benchmark data in {data_dir} ...', flush=True)
        t = time.time()
        build_dataset(data_dir, spec, verbose=False)
        print(f'  built in {time.time() - t:.0f} s', flush=True)
    from dataclasses import asdict
    return asdict(spec)


def load_done(path: str, fp: str):
    """A finished run's result if it was made with the same settings."""
    if not osp.isfile(path):
        return None
    with open(path) as f:
        done = json.load(f)
    return done if done.get('fingerprint') == fp else None


def run_benchmark(args, runs_dir: str, jobs: int, threads: int) -> None:
    spec = ensure_data(args.data_dir, args.dataset)
    with open(args.config) as f:
        config_text = f.read()
    data = {f'{key}.dataset.data_root': args.data_dir
            for key in ('train_dataloader', 'val_dataloader')}
    ctx = mp.get_context('spawn')
    pre = pre_fp = None
    if not args.scratch:
        pre, pre_fp = run_stage0(args, config_text, data, spec, ctx)

    todo = []
    for variant in args.variants:
        options = dict(args.cfg_options, **data)
        options.update(variant_options(variant))
        key = dict(options)
        if pre is not None:
            options['load_from'] = pre['checkpoint']
            # the fingerprint holds stage 0's, not the checkpoint path
            key['load_from'] = pre_fp
        fp = fingerprint(config_text, key, spec)
        for seed in args.seeds:
            out = osp.join(runs_dir, f'{variant}_s{seed}.json')
            if load_done(out, fp) is not None:
                continue
            if osp.isfile(out):
                print(f'{variant} seed {seed}: settings changed, running '
                      'again', flush=True)
            todo.append((variant, seed, options, out, fp))
    run_all(todo, args, jobs, threads, ctx)


def run_stage0(args, config_text: str, data: dict, spec: dict, ctx):
    """Stage 0, the FP model every variant starts from (cached)."""
    pre_opts = dict(args.cfg_options, **data,
                    **pretrain_options(args.config, args.cfg_options))
    pre_fp = fingerprint(config_text, pre_opts, spec)
    pre_json = osp.join(args.work_dir, 'pretrain.json')
    pre = load_done(pre_json, pre_fp)
    if pre is None or not osp.isfile(pre.get('checkpoint') or ''):
        print('stage 0: FP pretraining (seed 0) ...', flush=True)
        work = osp.join(args.work_dir, 'work', 'pretrain')
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            pre = pool.submit(run_one, args.config, 'fp_pretrain', 0, work,
                              pre_opts, os.cpu_count() or 1, pre_json,
                              dict(fingerprint=pre_fp,
                                   options=pre_opts)).result()
        print(f"stage 0: mIoU {pre['mIoU']:.2f} "
              f"({pre['total_time_s'] / 60:.1f} min)", flush=True)
    return pre, pre_fp


def run_all(todo: list, args, jobs: int, threads: int, ctx) -> None:
    """Run (variant, seed, options, out, fingerprint) jobs, report each."""
    print(f'{len(todo)} runs to do ({jobs} at a time, {threads} thread(s) '
          'each); a run takes 2-5 minutes on a 2-core machine', flush=True)
    start = time.time()
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx,
                             max_tasks_per_child=1) as pool:
        futures = {}
        for variant, seed, options, out, fp in todo:
            work = osp.join(args.work_dir, 'work', f'{variant}_s{seed}')
            meta = dict(fingerprint=fp, options=options)
            futures[pool.submit(run_one, args.config, variant, seed, work,
                                options, threads, out, meta)] = (variant,
                                                                 seed, work)
        for fut in as_completed(futures):
            variant, seed, work = futures[fut]
            try:
                r = fut.result()
            except Exception as e:  # keep the others running
                print(f'{variant} seed {seed}: FAILED ({e}); see '
                      f'{work}/run.log', flush=True)
                continue
            print(f"{variant} seed {seed}: mIoU {r['mIoU']:.2f} aAcc "
                  f"{r['aAcc']:.2f} ({r['total_time_s'] / 60:.1f} min)",
                  flush=True)
    if todo:
        print(f'benchmark time: {(time.time() - start) / 60:.1f} min',
              flush=True)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.list:
        for name, (what, opts) in VARIANTS.items():
            main_mark = '*' if name in MAIN_VARIANTS else ' '
            print(f'{main_mark} {name:24s} {what}')
        print('(* = main table)')
        return
    runs_dir = osp.join(args.work_dir, 'runs')
    os.makedirs(runs_dir, exist_ok=True)
    cores = os.cpu_count() or 1
    jobs = args.jobs or cores
    threads = args.threads or max(1, cores // jobs)

    if not args.report_only:
        run_benchmark(args, runs_dir, jobs, threads)

    results = [r for r in load_results(runs_dir)
               if r['variant'] in args.variants and r['seed'] in args.seeds]
    order = [v for v in VARIANTS if v in args.variants]
    rows = aggregate(results, order)
    if not rows:
        print('no finished runs')
        return
    first = results[0]
    table = format_table(rows)
    note = (f"{len(results)} runs; machine: {first['cpu']}, "
            f"{first['threads']} torch thread(s) per run, torch "
            f"{first['torch']}; mean ± sample standard deviation over seeds")
    with open(osp.join(args.work_dir, 'results.md'), 'w') as f:
        f.write(table + '\n\n' + note + '\n')
    with open(osp.join(args.work_dir, 'results.json'), 'w') as f:
        json.dump(rows, f, indent=2)
    plot_results(rows, osp.join(args.work_dir, 'results.png'),
                 'texture-mosaic accuracy benchmark (mean ± std over seeds)')
    print(table)
    print(note)
    print(f"wrote {osp.join(args.work_dir, 'results.md')}, results.png, "
          'results.json')


if __name__ == '__main__':
    main()
