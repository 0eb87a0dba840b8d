"""Fidelity diagnostic: how far each binary variant, loaded from one trained
FP checkpoint, is from the FP model, per block, before any binary training.

Usage::

    python tools/analysis/fidelity.py CONFIG FP_CKPT
        [--variants react binaryvit didb didb_no_hfsc ...]
        [--num-images 16] [--eval-images N | --no-eval]
        [--data-dir data/texture_bench] [--out PATH] [--threads N]
        [--cfg-options key=value ...]

CONFIG is a benchmark config (``configs/bench/texture_bench.py``,
``texture_bench_vit.py``, ...) and FP_CKPT the FP model it starts from (the
accuracy benchmark's stage 0: ``WORK_DIR/pretrain.json`` names it). Every
variant is loaded from FP_CKPT as the benchmark starts a run; on the first
``--num-images`` validation images the tool compares, block by block, the
variant's attention (KL of the attention rows, cosine similarity of the
binarized map with the FP one) and block outputs (cosine similarity,
relative error) with the FP model's, and evaluates the variant's mIoU on
the validation split (``--eval-images`` of it; ``--no-eval`` skips it).
Prints the summary and per-block tables; writes ``OUT.md`` and
``OUT.json`` (default ``work_dirs/fidelity/CONFIGNAME``).
"""
import argparse
import json
import os
import os.path as osp
import sys
import time

ROOT = osp.abspath(osp.join(osp.dirname(__file__), '..', '..'))
sys.path.insert(0, ROOT)

from mmengine.config import DictAction  # noqa: E402

from mmseg_didb.analysis.accuracy import (  # noqa: E402
    MAIN_VARIANTS, VARIANTS, ensure_data)

#: Default variants: the binary rows of the main table.
DEFAULT_VARIANTS = [v for v in MAIN_VARIANTS if v != 'fp']


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='benchmark config file')
    parser.add_argument('checkpoint', help='the trained FP checkpoint')
    parser.add_argument('--variants', nargs='+', default=DEFAULT_VARIANTS,
                        help='variants compared with fp (default: the binary '
                        'rows of the main table; accuracy_bench.py --list)')
    parser.add_argument('--num-images', type=int, default=16,
                        help='validation images of the comparison (from '
                        'the first batch; default 16)')
    parser.add_argument('--eval-images', type=int, default=None,
                        help='validation images of the mIoU (default all)')
    parser.add_argument('--no-eval', action='store_true',
                        help='skip the mIoU before training')
    parser.add_argument('--data-dir', default=osp.join(
        ROOT, 'data', 'texture_bench'),
        help='the benchmark data (built here on first use)')
    parser.add_argument('--out', default=None,
                        help='output path without extension (default '
                        'work_dirs/fidelity/CONFIGNAME)')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch CPU threads (default: torch default)')
    parser.add_argument('--allow-unsafe-load', action='store_true',
                        help='load a checkpoint that weights-only unpickling '
                        'refuses (trusted files only; logged)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        default={}, help='overrides applied to every model')
    args = parser.parse_args(argv)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f'unknown variants {unknown}; valid: {sorted(VARIANTS)}')
    if args.num_images < 1:
        parser.error('--num-images must be at least 1')
    if not osp.isfile(args.checkpoint):
        parser.error(f'no checkpoint {args.checkpoint}: train the FP model '
                     'first, e.g. python tools/analysis/accuracy_bench.py '
                     '--task vit --stage0-only (it prints the checkpoint; '
                     'WORK_DIR/pretrain.json names it too)')
    if args.out is None:
        stem = osp.splitext(osp.basename(args.config))[0]
        args.out = osp.join(ROOT, 'work_dirs', 'fidelity', stem)
    return args


def build_val_loader(config: str, data_dir: str, batch_size: int,
                     cfg_options: dict):
    """The config's validation dataloader on ``data_dir``, in order."""
    from mmengine.registry import init_default_scope
    from mmengine.runner import Runner

    import mmseg_didb  # noqa: F401
    from mmseg_didb.analysis import load_config
    cfg = load_config(config, cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmseg'))
    loader = cfg.val_dataloader
    loader.dataset.data_root = data_dir
    loader.batch_size = max(batch_size, loader.batch_size)
    loader.num_workers = 0
    loader.persistent_workers = False
    loader.sampler = dict(type='DefaultSampler', shuffle=False)
    return Runner.build_dataloader(loader.to_dict())


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    from mmseg_didb.analysis.fidelity import (fidelity_report,
                                              format_fidelity, report_json)
    start = time.time()
    ensure_data(args.data_dir)
    loader = build_val_loader(args.config, args.data_dir, args.num_images,
                              args.cfg_options)
    report = fidelity_report(
        args.config, args.checkpoint, args.variants, loader,
        num_images=args.num_images,
        eval_images=0 if args.no_eval else args.eval_images,
        cfg_options=args.cfg_options,
        allow_unsafe=args.allow_unsafe_load)
    table = format_fidelity(report)
    note = (f'{args.config}, FP checkpoint {args.checkpoint}; comparison on '
            f'{args.num_images} validation images; mIoU on '
            f"{'no' if args.no_eval else args.eval_images or 'all'} "
            f'validation images; {time.time() - start:.0f} s, '
            f'{torch.get_num_threads()} thread(s)')
    print(table)
    print(note)
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    with open(args.out + '.md', 'w') as f:
        f.write(table + '\n\n' + note + '\n')
    with open(args.out + '.json', 'w') as f:
        json.dump(dict(config=args.config, checkpoint=args.checkpoint,
                       num_images=args.num_images, variants=report_json(
                           report)), f, indent=2)
    print(f'wrote {args.out}.md and {args.out}.json')


if __name__ == '__main__':
    main()
