"""The accuracy benchmark: tasks, variants, protocols, one training run,
aggregation, outputs.

Tasks (:data:`TASKS`) are benchmark configs sharing one dataset and
schedule (``configs/bench/texture_bench.py``): ``swin`` (4x4 windows, one
block per stage), ``swin_w8`` (8x8 windows, two blocks per stage) and
``vit`` (the DeiT layout: global attention over 256 tokens and a CLS token,
a binary neck and head).

Protocols (:data:`PROTOCOLS`): stage 0 trains the FP model once (seed 0,
``pretrain_iters``). ``plain``: each variant then starts from that
checkpoint and trains ``max_iters`` iterations with its own seed, the way
binary transformers are trained from an FP model in the papers.
``two-stage`` (DIDB-ViT's, :func:`two_stage_options`): binary activations
with FP weights, then fully binary, both distilled from the stage-0 model,
in the same total number of iterations. A variant
is the benchmark config plus config overrides: the preset of the backbone
and the heads, or one preset switch of DIDB. Each run goes through
mmengine's ``Runner`` in a fresh process and is evaluated with mmseg's
``IoUMetric`` on the validation split; its result is one JSON file, so an
interrupted benchmark resumes where it stopped. The table (mean and sample
standard deviation over seeds) and a bar chart are built from those files.
"""
import copy
import hashlib
import json
import math
import os
import os.path as osp
import statistics
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

__all__ = [
    'VARIANTS', 'MAIN_VARIANTS', 'ALTERNATIVES', 'TASKS', 'PROTOCOLS',
    'bench_spec', 'ensure_data', 'variant_options', 'pretrain_options',
    'two_stage_options', 'fingerprint', 'run_one', 'aggregate',
    'format_table', 'plot_results', 'load_results', 'stage1_dir',
    'with_stage1_time'
]


def _both(preset: str, **overrides) -> Dict[str, object]:
    """Overrides giving backbone and decode head the same preset."""
    out: Dict[str, object] = {
        'model.backbone.preset': preset,
        'model.decode_head.preset': preset,
    }
    if overrides:
        out['model.backbone.preset_overrides'] = dict(overrides)
    return out


#: name -> (description, config overrides). Ablations switch one DIDB
#: component off in the backbone (the heads have no attention).
VARIANTS: Dict[str, tuple] = {
    'fp': ('FP counterpart (same topology, no binarization)', _both('fp')),
    'bnn': ('BNN: sign weights, clipped STE', _both('bnn')),
    'react': ('ReActNet: centred weights, RSign, RPReLU', _both('react')),
    'bit': ('BiT: BWN weights, elastic activations', _both('bit')),
    'binaryvit': ('BinaryViT: ASM + GRS-like loss', _both('binaryvit')),
    'didb': ('DIDB: HFSC + DIBA + Token RPReLU', _both('didb')),
    'didb_no_hfsc': ('DIDB without HFSC', _both('didb', hfsc=False)),
    'didb_no_diba_shortcut': ('DIDB without the DIBA shortcut term',
                              _both('didb', diba_shortcut=False)),
    'didb_no_diba_local': ('DIDB without the DIBA local term',
                           _both('didb', diba_local=False)),
    'didb_no_token_rprelu': ('DIDB without Token RPReLU (plain RPReLU)',
                             _both('didb', token_rprelu=False)),
    'didb_fp_head': ("binary DIDB backbone + mmseg's FP head",
                     {'model.backbone.preset': 'didb',
                      'model.decode_head.preset': 'fp'}),
    # documented alternatives of the reconstruction (not in the main table)
    'didb_hfsc_split': ('DIDB, HFSC branches on half head dims each',
                        _both('didb', hfsc='split')),
    'didb_hfsc_ll': ('DIDB, HFSC low band = Haar LL (earlier reconstruction)',
                     _both('didb', hfsc_low='ll')),
    'didb_token_dynamic': ('DIDB, dynamic Token RPReLU',
                           _both('didb', token_rprelu='dynamic')),
    'didb_diba_local0': ('DIDB, DIBA local term starting at l_l = 0',
                         dict(_both('didb'), **{
                             'model.backbone.attn_cfg': dict(
                                 diba_local_init=0.0)})),
    'didb_prob0005': ("DIDB, {0, a} starting at BinaryViT-Le's a = 0.005",
                      dict(_both('didb'), **{
                          'model.backbone.attn_cfg': dict(
                              prob_scale_init=0.005)})),
    # A diagnostic (tools/analysis/fidelity.py): HFSC's similarity without
    # binarization, loaded from the FP model as the binary variants are.
    'fp_hfsc': ('FP with the HFSC similarity (no binarization)',
                _both('fp', hfsc='full')),
}
#: The documented alternatives of the DIDB reconstruction.
ALTERNATIVES = ('didb_hfsc_split', 'didb_hfsc_ll', 'didb_token_dynamic',
                'didb_diba_local0', 'didb_prob0005')

#: Variants of the main table (README / docs/results.md).
MAIN_VARIANTS = ('fp', 'bnn', 'react', 'bit', 'binaryvit', 'didb',
                 'didb_no_hfsc', 'didb_no_diba_shortcut', 'didb_no_diba_local',
                 'didb_no_token_rprelu')

#: Benchmark tasks: name -> (config, relative to the repository, what it is).
#: Data, protocol and schedule are the same for all; the model differs.
TASKS: Dict[str, Tuple[str, str]] = {
    'swin': ('configs/bench/texture_bench.py',
             'DIDBSwin, 4x4 windows, one block per stage'),
    'swin_w8': ('configs/bench/texture_bench_swin_w8.py',
                'DIDBSwin, 8x8 windows, two blocks per stage'),
    'vit': ('configs/bench/texture_bench_vit.py',
            'DIDBViT (DeiT layout): global attention over 256 tokens + CLS, '
            '6 blocks, binary neck'),
}

#: Training protocols after stage 0: ``plain`` trains each variant from the
#: FP checkpoint; ``two-stage`` is the paper's: binary activations with FP
#: weights, then fully binary, both distilled from the stage-0 FP model.
PROTOCOLS = ('plain', 'two-stage')


def bench_spec(name: str = 'bench'):
    """A dataset build: ``'bench'`` (the benchmark's grayscale 64x64 texture
    mosaics) or ``'demo'`` (the demo's default build)."""
    from mmseg_didb.datasets.texture_maker import MosaicSpec
    if name == 'demo':
        return MosaicSpec()
    if name != 'bench':
        raise ValueError(f"dataset must be 'bench' or 'demo', got {name!r}")
    return MosaicSpec(seed=0, size=64, num_train=2000, num_val=400,
                      gray=True)



def ensure_data(data_dir: str, dataset: str = 'bench') -> dict:
    """Build the :func:`bench_spec` data into ``data_dir`` unless it is
    there; returns the spec as a dict (part of every run's fingerprint)."""
    from dataclasses import asdict

    from mmseg_didb.datasets.texture_maker import build_dataset, is_built
    spec = bench_spec(dataset)
    if not is_built(data_dir, spec):
        print(f'building the benchmark data in {data_dir} ...', flush=True)
        start = time.time()
        build_dataset(data_dir, spec, verbose=False)
        print(f'  built in {time.time() - start:.0f} s', flush=True)
    return asdict(spec)


def variant_options(name: str, config=None) -> Dict[str, object]:
    """Config overrides of a variant; unknown names list the valid ones.

    Args:
        name: A key of :data:`VARIANTS`.
        config: The benchmark config (path or ``Config``). When its model has
            a neck with a preset (the ViT task's binary multi-level neck),
            the neck gets the decode head's preset, so that ``fp`` is FP
            throughout and a baseline's neck is the baseline's.
    """
    if name not in VARIANTS:
        raise ValueError(f'unknown benchmark variant {name!r}; valid: '
                         f'{sorted(VARIANTS)}')
    options = copy.deepcopy(VARIANTS[name][1])
    if config is not None:
        from .builder import load_config
        neck = load_config(config).model.get('neck')
        if isinstance(neck, dict) and 'preset' in neck:
            options['model.neck.preset'] = options['model.decode_head.preset']
    return options


def fingerprint(config_text: str, options: dict, spec: dict) -> str:
    """Hash of everything that decides a run's result but the seed."""
    blob = json.dumps(dict(config=config_text, options=options, spec=spec),
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _cpu_name() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return 'unknown CPU'


def pretrain_options(config: str,
                     cfg_options: Optional[dict] = None) -> Dict[str, object]:
    """Overrides of stage 0: the FP model, ``pretrain_iters`` iterations at
    ``pretrain_lr`` (10% linear warm-up, poly decay), one checkpoint at the
    end."""
    from mmengine.config import Config
    cfg = Config.fromfile(config)
    cfg.merge_from_dict(cfg_options or {})
    opts = variant_options('fp', cfg)
    opts.update(_schedule(int(cfg.pretrain_iters), float(cfg.pretrain_lr)))
    return opts


def _schedule(iters: int, lr: float, checkpoint: bool = True) -> dict:
    """Overrides of one training stage: ``iters`` iterations at ``lr``
    (10% linear warm-up, poly decay), validation only after training, and
    (``checkpoint``) one checkpoint at the end."""
    warm = max(1, iters // 10)
    opts = {
        'train_cfg.max_iters': iters,
        'train_cfg.val_interval': iters + 1,
        'optim_wrapper.optimizer.lr': lr,
        'param_scheduler': [
            dict(type='LinearLR', start_factor=0.05, by_epoch=False,
                 begin=0, end=warm),
            dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False,
                 begin=warm, end=iters)
        ],
    }
    if checkpoint:
        opts['default_hooks.checkpoint'] = dict(
            type='CheckpointHook', by_epoch=False, interval=iters,
            save_last=True, max_keep_ckpts=1)
    return opts


def two_stage_options(config: str, stage: int, teacher_checkpoint: str,
                      cfg_options: Optional[dict] = None) -> Dict[str, object]:
    """Overrides of one stage of the two-stage protocol (DIDB-ViT's, after
    ReActNet): stage 1 binarizes the activations only (FP weights), stage 2
    the weights too (weight decay 0); both are distilled per pixel from the
    FP model of stage 0 (``DistillEncoderDecoder``, KL at temperature 1).

    The stages split the plain protocol's ``train_cfg.max_iters`` in two
    halves (or ``two_stage_iters = (n1, n2)`` of the config), each at the
    config's learning rate with the same warm-up and decay, so that both
    protocols train for the same number of iterations. Stage 1 saves its
    last checkpoint for stage 2 (the caller sets ``load_from``).

    Args:
        config: The benchmark config file.
        stage: 1 or 2.
        teacher_checkpoint: The stage-0 FP checkpoint.
        cfg_options: Overrides applied to every run (and to the teacher).
    """
    if stage not in (1, 2):
        raise ValueError(f'stage must be 1 or 2, got {stage!r}')
    from mmengine.config import Config
    cfg = Config.fromfile(config)
    cfg.merge_from_dict(cfg_options or {})
    total = int(cfg.train_cfg.max_iters)
    iters = tuple(cfg.get('two_stage_iters', (total // 2, total - total // 2)))
    cfg.merge_from_dict(variant_options('fp', cfg))
    opts = _schedule(int(iters[stage - 1]),
                     float(cfg.optim_wrapper.optimizer.lr),
                     checkpoint=stage == 1)
    opts.update({
        'model.type': 'DistillEncoderDecoder',
        'model.teacher_config': cfg.model.to_dict(),
        'model.teacher_checkpoint': teacher_checkpoint,
        'model.distill': dict(temperature=1.0, weight=1.0),
        'model.binarize': dict(weights=False) if stage == 1 else None,
    })
    if stage == 2:
        opts['optim_wrapper.optimizer.weight_decay'] = 0.0
    return opts


def run_one(config: str, variant: str, seed: int, work_dir: str,
            options: dict, threads: int, out_json: str,
            meta: dict) -> dict:
    """Train one (variant, seed) and evaluate it; writes ``out_json``.

    Runs in its own process (see ``tools/analysis/accuracy_bench.py``);
    stdout and stderr go to ``work_dir/run.log``. The result records the
    checkpoint of the run when one was saved (stage 0).
    """
    os.makedirs(work_dir, exist_ok=True)
    log = open(osp.join(work_dir, 'run.log'), 'w')
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout = sys.stderr = log
    import torch
    torch.set_num_threads(threads)
    from mmengine.config import Config
    from mmengine.runner import Runner

    import mmseg_didb  # noqa: F401
    cfg = Config.fromfile(config)
    cfg.merge_from_dict(options)
    cfg.work_dir = work_dir
    cfg.randomness = dict(seed=seed)
    cfg.launcher = 'none'
    start = time.time()
    runner = Runner.from_cfg(cfg)
    runner.train()
    train_time = time.time() - start
    metrics = runner.val_loop.run()
    last = osp.join(work_dir, 'last_checkpoint')
    checkpoint = None
    if osp.isfile(last):
        with open(last) as f:
            checkpoint = f.read().strip()
    result = dict(
        variant=variant, seed=seed,
        mIoU=float(metrics['mIoU']), aAcc=float(metrics['aAcc']),
        mAcc=float(metrics['mAcc']), train_time_s=train_time,
        total_time_s=time.time() - start, threads=threads,
        cpu=_cpu_name(), torch=torch.__version__, checkpoint=checkpoint,
        **meta)
    tmp = out_json + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(result, f, indent=2)
    os.replace(tmp, out_json)
    return result


def load_results(folder: str) -> List[dict]:
    """Every per-run JSON in ``folder``."""
    out = []
    if not osp.isdir(folder):
        return out
    for name in sorted(os.listdir(folder)):
        if name.endswith('.json'):
            with open(osp.join(folder, name)) as f:
                out.append(json.load(f))
    return out


def stage1_dir(runs_dir: str) -> str:
    """Where the two-stage protocol keeps its stage-1 runs."""
    return osp.join(runs_dir, 'stage1')


def with_stage1_time(results: List[dict], runs_dir: str) -> List[dict]:
    """Two-stage results whose ``total_time_s`` covers both stages: a
    stage-2 run's own JSON times stage 2 only, and a two-stage run costs
    the sum (``stage_times_s`` keeps the two)."""
    out = []
    for r in results:
        path = osp.join(stage1_dir(runs_dir),
                        f"{r['variant']}_s{r['seed']}.json")
        if not osp.isfile(path):
            raise FileNotFoundError(
                f'{path}: the stage-1 run of this stage-2 result is missing; '
                'run the two-stage protocol again to redo it')
        with open(path) as f:
            first = json.load(f)
        times = [first['total_time_s'], r['total_time_s']]
        out.append(dict(r, total_time_s=sum(times), stage_times_s=times))
    return out


def _mean_std(values: Sequence[float]) -> tuple:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else float('nan')
    return mean, std


def aggregate(results: List[dict],
              order: Optional[Sequence[str]] = None) -> List[dict]:
    """Rows ``dict(variant, n, seeds, mIoU, mIoU_std, aAcc, aAcc_std,
    time_s)``: mean and sample standard deviation over seeds."""
    by: Dict[str, List[dict]] = {}
    for r in results:
        by.setdefault(r['variant'], []).append(r)
    names = [v for v in (order or sorted(by)) if v in by]
    rows = []
    for name in names:
        runs = sorted(by[name], key=lambda r: r['seed'])
        miou, miou_std = _mean_std([r['mIoU'] for r in runs])
        aacc, aacc_std = _mean_std([r['aAcc'] for r in runs])
        rows.append(dict(
            variant=name, n=len(runs), seeds=[r['seed'] for r in runs],
            mIoU=miou, mIoU_std=miou_std, aAcc=aacc, aAcc_std=aacc_std,
            time_s=statistics.fmean(r['total_time_s'] for r in runs)))
    return rows


def format_table(rows: List[dict]) -> str:
    """Markdown table of :func:`aggregate` rows."""

    def pm(m: float, s: float) -> str:
        return f'{m:.2f} ± {s:.2f}' if not math.isnan(s) else f'{m:.2f}'

    lines = ['| variant | what | seeds | mIoU | aAcc | time / run |',
             '|---|---|---:|---:|---:|---:|']
    for r in rows:
        what = VARIANTS[r['variant']][0] if r['variant'] in VARIANTS else ''
        lines.append(
            f"| `{r['variant']}` | {what} | {r['n']} | "
            f"{pm(r['mIoU'], r['mIoU_std'])} | "
            f"{pm(r['aAcc'], r['aAcc_std'])} | {r['time_s'] / 60:.1f} min |")
    return '\n'.join(lines)


def plot_results(rows: List[dict], path: str, title: str = '') -> None:
    """Bar chart of mIoU and aAcc (mean, error bars = standard deviation)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    names = [r['variant'] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.1 * len(rows) + 4), 4.5))
    for ax, key in zip(axes, ('mIoU', 'aAcc')):
        means = [r[key] for r in rows]
        stds = [0 if math.isnan(r[key + '_std']) else r[key + '_std']
                for r in rows]
        colors = ['tab:gray' if n == 'fp' else 'tab:red' if
                  n.startswith('didb') else 'tab:blue' for n in names]
        ax.bar(range(len(rows)), means, yerr=stds, capsize=4, color=colors)
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels(names, rotation=45, ha='right')
        ax.set_ylabel(f'{key} (%)')
        low = min(m - s for m, s in zip(means, stds))
        ax.set_ylim(max(0, low - 5), max(m + s for m, s in zip(means, stds))
                    + 2)
        ax.grid(axis='y', alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
