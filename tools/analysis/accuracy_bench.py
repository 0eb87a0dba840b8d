"""Accuracy benchmark: train variants for several seeds, report mean and std.

Usage::

    python tools/analysis/accuracy_bench.py [--task swin|swin_w8|vit]
        [--protocol plain|two-stage] [--variants fp react didb ...]
        [--seeds 0 1 2] [--jobs N] [--work-dir DIR]
        [--data-dir data/texture_bench] [--config CONFIG]
        [--cfg-options key=value ...] [--list]

Data: a grayscale texture-mosaic build made from scikit-image photographs
(built into ``--data-dir`` on first use). Tasks (``--task``, the model;
``--list`` shows them): ``swin`` (default; configs/bench/texture_bench.py),
``swin_w8`` (8x8 windows, two blocks per stage) and ``vit`` (the DeiT layout
with global attention). Protocol: stage 0 trains the FP model once (seed 0);
each (variant, seed) then trains the benchmark model from that checkpoint
(``--protocol plain``) or in the paper's two stages, binary activations and
then binary weights, both distilled from the stage-0 model (``--protocol
two-stage``, the same number of iterations in all). Every run goes through
mmengine's Runner in a fresh process (``--jobs`` runs at a time with
``cores / jobs`` threads each) and is evaluated with mmseg's IoUMetric on
the validation split. Results, in ``--work-dir`` (default
``work_dirs/accuracy_bench`` for ``swin``, ``work_dirs/accuracy_bench_TASK``
otherwise):

* ``pretrain.json`` and ``runs/VARIANT_sSEED.json`` (two-stage:
  ``runs_two_stage/``, stage 1 in ``runs_two_stage/stage1/``): one file per
  run (finished runs are skipped when the benchmark is started again with
  the same settings);
* ``results.md`` (two-stage: ``results_two_stage.md``): mean ± sample
  standard deviation over seeds of mIoU and aAcc, the cost per run, the
  machine;
* ``results.png`` / ``results_two_stage.png``: bar chart with
  standard-deviation error bars;
* ``results.json`` / ``results_two_stage.json``: the aggregated rows.
"""
import argparse
import json
import os
import os.path as osp
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
import multiprocessing as mp
from typing import Callable, List, NamedTuple, Optional

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
sys.path.insert(0, ROOT)
# idle OpenMP threads sleep instead of spinning (a shared machine otherwise
# slows multi-threaded training down many times over)
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

from mmengine.config import DictAction  # noqa: E402

from mmseg_didb.analysis.accuracy import (  # noqa: E402
    MAIN_VARIANTS, PROTOCOLS, TASKS, VARIANTS, aggregate, ensure_data,
    fingerprint, format_table, load_results, plot_results, pretrain_options,
    run_one, stage1_dir, two_stage_options, variant_options,
    with_stage1_time)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--task', choices=list(TASKS), default=None,
                        help='the benchmark model (sets --config and the '
                        'default --work-dir); --list shows them')
    parser.add_argument('--protocol', choices=PROTOCOLS, default='plain',
                        help="'plain' (default): each variant trains from "
                        "the FP checkpoint; 'two-stage': binary activations, "
                        'then binary weights, both distilled from it')
    parser.add_argument('--variants', nargs='+', default=list(MAIN_VARIANTS),
                        help='variants to run (default: the main table); '
                        '--list shows them')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--jobs', type=int, default=1,
                        help='runs at a time (default 1, using every core)')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch threads per run (default cores / jobs)')
    parser.add_argument('--config', default=None,
                        help="the benchmark config (default: the task's)")
    parser.add_argument('--work-dir', default=None,
                        help='default work_dirs/accuracy_bench (swin), '
                        'work_dirs/accuracy_bench_TASK or, for another '
                        'config, work_dirs/accuracy_bench_CONFIGNAME')
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
    parser.add_argument('--stage0-only', action='store_true',
                        help='only train (or find) the stage-0 FP model and '
                        'print its checkpoint (the input of '
                        'tools/analysis/fidelity.py)')
    parser.add_argument('--report-only', action='store_true',
                        help='only rebuild the table and chart from the '
                        'finished runs')
    parser.add_argument('--list', action='store_true',
                        help='list the variants and exit')
    args = parser.parse_args(argv)
    if args.config is None:
        args.task = args.task or 'swin'
        args.config = osp.join(ROOT, TASKS[args.task][0])
    elif args.task is None:
        # a task's own config, named by path, is that task
        given = osp.abspath(args.config)
        args.task = next((name for name, (config, _) in TASKS.items()
                          if osp.join(ROOT, config) == given), 'custom')
    if args.work_dir is None:
        suffix = '' if args.task == 'swin' else f'_{args.task}'
        if args.task == 'custom':
            stem = osp.splitext(osp.basename(args.config))[0]
            suffix = f'_{stem}'
        args.work_dir = osp.join(ROOT, 'work_dirs', 'accuracy_bench' + suffix)
    if args.scratch and args.stage0_only:
        parser.error('--scratch has no stage 0')
    if args.scratch and args.protocol != 'plain':
        parser.error('--scratch has no stage 0 to distil from; use it with '
                     '--protocol plain')
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f'unknown variants {unknown}; valid: {sorted(VARIANTS)}')
    return args


def load_done(path: str, fp: str):
    """A finished run's result if it was made with the same settings."""
    if not osp.isfile(path):
        return None
    with open(path) as f:
        done = json.load(f)
    return done if done.get('fingerprint') == fp else None


class Job(NamedTuple):
    """One training run of the benchmark."""
    config: str
    variant: str
    seed: int
    options: dict
    out: str
    fingerprint: str
    work: str
    label: str


def plan(args, runs_dir: str, work_dir: str, label: str, config_text: str,
         spec: dict, settings: Callable[[str, int], Optional[tuple]]
         ) -> List[Job]:
    """The (variant, seed) runs not yet done with the same settings.

    ``settings(variant, seed)`` gives ``(options, key)``: the run's config
    overrides and what its fingerprint hashes (checkpoint paths replaced by
    the fingerprints of the runs that made them), or None to skip the run.
    """
    todo = []
    for variant in args.variants:
        for seed in args.seeds:
            got = settings(variant, seed)
            if got is None:
                continue
            options, key = got
            fp = fingerprint(config_text, key, spec)
            out = osp.join(runs_dir, f'{variant}_s{seed}.json')
            if load_done(out, fp) is not None:
                continue
            if osp.isfile(out):
                print(f'{label}{variant} seed {seed}: settings changed, '
                      'running again', flush=True)
            todo.append(Job(args.config, variant, seed, options, out, fp,
                            osp.join(work_dir, f'{variant}_s{seed}'), label))
    return todo


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
        if args.stage0_only:
            print(f"stage 0 checkpoint: {pre['checkpoint']}", flush=True)
            return

    def base(variant: str) -> dict:
        options = dict(args.cfg_options, **data)
        options.update(variant_options(variant, args.config))
        return options

    work = osp.join(args.work_dir, 'work')
    if args.protocol == 'plain':
        def plain(variant: str, seed: int) -> tuple:
            options = base(variant)
            key = dict(options)
            if pre is not None:
                options['load_from'] = pre['checkpoint']
                # the fingerprint holds stage 0's, not the checkpoint path
                key['load_from'] = pre_fp
            return options, key

        run_all(plan(args, runs_dir, work, '', config_text, spec, plain),
                jobs, threads, ctx)
        return

    # the paper's protocol: stage 1 (binary activations) from stage 0, then
    # stage 2 (fully binary) from stage 1, both distilled from stage 0
    stage1_runs = stage1_dir(runs_dir)
    os.makedirs(stage1_runs, exist_ok=True)
    both = dict(args.cfg_options, **data)

    def staged(stage: int, load_from: str, load_fp: str) -> tuple:
        opts = two_stage_options(args.config, stage, pre['checkpoint'], both)
        return dict(opts, load_from=load_from), dict(
            opts, load_from=load_fp, **{'model.teacher_checkpoint': pre_fp})

    def stage1(variant: str, seed: int) -> tuple:
        options, key = staged(1, pre['checkpoint'], pre_fp)
        return dict(base(variant), **options), dict(base(variant), **key)

    def stage2(variant: str, seed: int) -> Optional[tuple]:
        first = load_done(osp.join(stage1_runs, f'{variant}_s{seed}.json'),
                          fingerprint(config_text, stage1(variant, seed)[1],
                                      spec))
        if first is None or not osp.isfile(first.get('checkpoint') or ''):
            return None  # stage 1 failed (reported) or its checkpoint is gone
        options, key = staged(2, first['checkpoint'], first['fingerprint'])
        return dict(base(variant), **options), dict(base(variant), **key)

    work = osp.join(work, 'two_stage')
    run_all(plan(args, stage1_runs, osp.join(work, 'stage1'), 'stage 1: ',
                 config_text, spec, stage1), jobs, threads, ctx)
    run_all(plan(args, runs_dir, osp.join(work, 'stage2'), 'stage 2: ',
                 config_text, spec, stage2), jobs, threads, ctx)


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


def run_all(todo: List[Job], jobs: int, threads: int, ctx) -> None:
    """Run the jobs, ``jobs`` at a time, and report each."""
    if not todo:
        return
    print(f'{todo[0].label}{len(todo)} runs to do ({jobs} at a time, '
          f'{threads} thread(s) each)', flush=True)
    start = time.time()
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx,
                             max_tasks_per_child=1) as pool:
        futures = {}
        for job in todo:
            meta = dict(fingerprint=job.fingerprint, options=job.options)
            futures[pool.submit(run_one, job.config, job.variant,
                                job.seed, job.work, job.options, threads,
                                job.out, meta)] = job
        for fut in as_completed(futures):
            job = futures[fut]
            name = f'{job.label}{job.variant} seed {job.seed}'
            try:
                r = fut.result()
            except Exception as e:  # keep the others running
                print(f'{name}: FAILED ({e}); see {job.work}/run.log',
                      flush=True)
                continue
            print(f"{name}: mIoU {r['mIoU']:.2f} aAcc {r['aAcc']:.2f} "
                  f"({r['total_time_s'] / 60:.1f} min)", flush=True)
    print(f'{todo[0].label}time: {(time.time() - start) / 60:.1f} min',
          flush=True)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.list:
        for name, (what, opts) in VARIANTS.items():
            main_mark = '*' if name in MAIN_VARIANTS else ' '
            print(f'{main_mark} {name:24s} {what}')
        print('(* = main table)\ntasks (--task):')
        for name, (config, what) in TASKS.items():
            print(f'  {name:24s} {what} ({config})')
        return
    suffix = '' if args.protocol == 'plain' else '_two_stage'
    runs_dir = osp.join(args.work_dir, 'runs' + suffix)
    os.makedirs(runs_dir, exist_ok=True)
    cores = os.cpu_count() or 1
    jobs = args.jobs or cores
    threads = args.threads or max(1, cores // jobs)

    if not args.report_only:
        run_benchmark(args, runs_dir, jobs, threads)
        if args.stage0_only:
            return

    results = [r for r in load_results(runs_dir)
               if r['variant'] in args.variants and r['seed'] in args.seeds]
    if args.protocol == 'two-stage':
        results = with_stage1_time(results, runs_dir)
    order = [v for v in VARIANTS if v in args.variants]
    rows = aggregate(results, order)
    if not rows:
        print('no finished runs')
        return
    first = results[0]
    table = format_table(rows)
    what = TASKS[args.task][1] if args.task in TASKS else args.config
    note = (f"task {args.task} ({what}), protocol "
            f"{args.protocol}; {len(results)} runs; machine: {first['cpu']}, "
            f"{first['threads']} torch thread(s) per run, torch "
            f"{first['torch']}; mean ± sample standard deviation over seeds")
    out = osp.join(args.work_dir, 'results' + suffix)
    with open(out + '.md', 'w') as f:
        f.write(table + '\n\n' + note + '\n')
    with open(out + '.json', 'w') as f:
        json.dump(rows, f, indent=2)
    plot_results(rows, out + '.png',
                 f'texture-mosaic accuracy benchmark, task {args.task}, '
                 f'{args.protocol} protocol (mean ± std over seeds)')
    print(table)
    print(note)
    print(f'wrote {out}.md, .png, .json')


if __name__ == '__main__':
    main()
