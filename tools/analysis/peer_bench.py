"""The packed 1-bit model beside the INT8 engines a deployer would otherwise
pick (ONNX Runtime, OpenVINO), one image, in one run.

Usage::

    python tools/analysis/peer_bench.py CONFIG [--checkpoint CKPT]
        [--models counterpart mmseg] [--engines ort-fp32 ort-int8 ov ov-int8]
        [--threads-list 1 2] [--calib 8] [--repeats 7]
        [--work-dir work_dirs/peer_bench] [--json PATH]

Every engine does the same task: a normalised image of the config's crop
size (a texture mosaic of real photographs) to its label map (logits
resized to the input, argmax). Rows: the packed binary model of CONFIG
(``convert_to_packed``; from ``--checkpoint``, or at its initialisation),
and for each FP model (``counterpart``: CONFIG with every preset ``fp``;
``mmseg``: mmseg's stock UPerNet of the same backbone) exported to ONNX
(dynamo exporter) and run by ONNX Runtime in FP32 and statically quantized
to INT8 (QDQ, per-channel weights), and by OpenVINO at its default
precision (bf16 on CPUs that have it) and quantized to INT8 with NNCF;
INT8 calibration uses ``--calib`` further real-photo images. The FP models
are randomly initialised (nothing is downloaded): their work, and so their
time, does not depend on the weights. Agreement: the packed model against
the fake-quantized model (pixels), each FP engine against its PyTorch FP
model. Threads: torch's, ONNX Runtime's intra-op and OpenVINO's inference
threads are set to each ``--threads-list`` value in turn.

Needs the optional engines: ``pip install -e .[peers]`` (or ``pip install
-r requirements/peers.txt -c requirements/constraints.txt``).
"""
import argparse
import json
import os
import os.path as osp
import sys

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), '..', '..')))

from mmengine.config import DictAction  # noqa: E402

from mmseg_didb.analysis import load_config  # noqa: E402
from mmseg_didb.analysis.benchmark import describe_device  # noqa: E402
from mmseg_didb.analysis.peers import (ENGINES, format_peer_table,  # noqa
                                       run_peer_bench)
from mmseg_didb.compat import add_unsafe_load_argument  # noqa: E402
from mmseg_didb.deploy import kernel_variant  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='the binary model config')
    parser.add_argument('--checkpoint', help='binary model checkpoint')
    parser.add_argument('--models', nargs='+', default=['counterpart',
                                                         'mmseg'],
                        choices=['counterpart', 'mmseg'])
    parser.add_argument('--engines', nargs='+', default=list(ENGINES),
                        choices=list(ENGINES))
    parser.add_argument('--threads-list', nargs='+', type=int,
                        default=[1, 2])
    parser.add_argument('--calib', type=int, default=8,
                        help='INT8 calibration images')
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=7)
    parser.add_argument('--work-dir', default=osp.join('work_dirs',
                                                       'peer_bench'))
    parser.add_argument('--json', help='write the results here')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    add_unsafe_load_argument(parser)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    result = run_peer_bench(
        cfg, args.work_dir, args.checkpoint, args.models, args.engines,
        args.threads_list, args.calib, args.warmup, args.repeats,
        allow_unsafe=args.unsafe_load)
    result.update(config=args.config, device=describe_device('cpu'),
                  kernels=kernel_variant())
    h, w = result['shape']
    print(f"\n{result['device']}, packed kernels {result['kernels']}; one "
          f'{h}x{w} image to its label map, median of {args.repeats} runs')
    print(format_peer_table(result))
    if args.json:
        os.makedirs(osp.dirname(osp.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w') as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == '__main__':
    main()
