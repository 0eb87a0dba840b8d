"""Params / BOPs / FLOPs / OPs / 1-bit size of a model and its FP counterpart.

Usage::

    python tools/analysis/complexity.py CONFIG [--shape H W] [--vs FP_CONFIG]
        [--json [PATH]] [--cfg-options key=value ...]

Counting conventions (docs/efficiency.md): FLOPs are multiply-accumulates as
mmengine's FlopAnalyzer counts them; a binary linear / conv with binary weights
*and* binary inputs, and the binary attention matmuls Q K^T and Ab V, count as
BOPs; OPs = BOPs / 64 + FLOPs; size = 1 bit per binary weight + 32 bits per FP
parameter (and per derived weight scale). The FP counterpart defaults to the
same config with every ``preset`` set to ``'fp'``.
"""
import argparse
import json
import os.path as osp
import sys

import torch

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), '..', '..')))

from mmseg_didb.analysis import (analyze_config,  # noqa: E402
                                 comparison_config, format_report,
                                 load_config, ratios)
from mmseg_didb.analysis.cli import (add_model_args,  # noqa: E402
                                     check_model_args)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_model_args(
        parser,
        vs_help="FP counterpart config to compare with; 'auto' (default) "
        "sets every preset to 'fp'; 'none' skips the comparison",
        json_help='write JSON (to PATH, or stdout when no PATH is given, '
        'replacing the tables)')
    args = parser.parse_args(argv)
    check_model_args(parser, args)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.cfg_options)
    shape = tuple(args.shape)
    report = analyze_config(cfg, shape)
    result = dict(config=args.config, shape=list(shape),
                  model=report.to_dict())
    texts = [format_report(report, f'{args.config} @ {shape[0]}x{shape[1]}')]
    fp_cfg = comparison_config(cfg, args.vs, args.cfg_options)
    if fp_cfg is not None:
        fp_name = ('FP counterpart (preset=fp)' if args.vs == 'auto' else
                   args.vs)
        fp_report = analyze_config(fp_cfg, shape)
        r = ratios(report.total, fp_report.total)
        result.update(vs=fp_name, fp=fp_report.to_dict(), ratios=r)
        texts.append(format_report(fp_report, fp_name))
        texts.append(
            'FP / this model: size {size:.2f}x, OPs {ops:.2f}x, FLOPs '
            '{flops:.2f}x, params {params:.2f}x'.format(**r))
    texts.append('FLOPs = multiply-accumulates (mmengine convention); '
                 'OPs = BOPs/64 + FLOPs; size = 1 bit/binary weight + 32 '
                 'bits/FP value')
    if args.json == '-':
        print(json.dumps(result, indent=2))
    else:
        print('\n\n'.join(texts))
        if args.json:
            with open(args.json, 'w') as f:
                json.dump(result, f, indent=2)
    return result


if __name__ == '__main__':
    main()
