"""One-command check of the real training job on a GPU (run by
``tools/gpu_check.sh``).

On a machine with a CUDA GPU it

1. builds a small ADE20K-layout folder of texture mosaics at 512x512 (labels
   are valid ADE20K ids: 0 = ignore, 1..8 of the 150 classes);
2. runs the CUDA tests of the suite;
3. trains ``configs/didb_swin_t_ade20k.py`` and mmseg's stock Swin-T UPerNet
   for ``--iters`` iterations each, 2 images of 512x512 per GPU, with
   ``--amp`` (float16), through ``tools/dist_train.sh CONFIG 1`` (NCCL,
   SyncBN as configured), from scratch (no weights are downloaded);
4. tests the binary model's checkpoint with ``tools/test.py``;
5. prints step time and peak GPU memory of binary vs stock side by side;
6. writes everything to ``OUT/gpu_check.json``.

On a machine without one it builds the data, builds both models and runs
one forward pass of each on the CPU, says that no GPU is present and exits
0; the JSON records ``"gpu": false``.

Usage::

    python tools/gpu_check.py [--out work_dirs/gpu_check] [--iters 30]
"""
import argparse
import json
import os
import os.path as osp
import re
import subprocess
import sys
import time
from typing import Dict, List, Optional

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

BINARY = 'configs/didb_swin_t_ade20k.py'
STOCK = ('mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_'
         '8xb2-160k_ade20k-512x512.py')
#: the CUDA-only tests of the suite (skipped on CPU machines)
CUDA_TESTS = ['tests/test_amp.py', 'tests/test_binary_layers.py',
              'tests/test_binary_quantizers.py']


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default=osp.join('work_dirs', 'gpu_check'),
                        help='folder for data, work dirs and the JSON')
    parser.add_argument('--iters', type=int, default=30,
                        help='training iterations of each model')
    parser.add_argument('--num-train', type=int, default=16)
    parser.add_argument('--num-val', type=int, default=4)
    return parser.parse_args(argv)


def data_options(data_root: str, iters: int) -> List[str]:
    """``--cfg-options`` that train an ADE20K config on the mosaic folder:
    its data root and ``.png`` images, ``iters`` iterations with one
    checkpoint at the end, a validation at the end, and no pretrained
    weights (nothing is downloaded)."""
    opts = []
    for split in ('train', 'val', 'test'):
        key = f'{split}_dataloader.dataset'
        opts += [f'{key}.data_root={data_root}', f'{key}.img_suffix=.png']
    return opts + [
        f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
        f'default_hooks.checkpoint.interval={iters}',
        'default_hooks.logger.interval=1', 'model.pretrained=None',
        'model.backbone.init_cfg=None', 'train_dataloader.batch_size=2',
        'train_dataloader.num_workers=2', 'val_dataloader.num_workers=2']


def run(cmd: List[str], log: str, env: Optional[dict] = None) -> dict:
    """Run ``cmd`` from the repository root, output to ``log``."""
    start = time.time()
    with open(log, 'w') as f:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f,
                              stderr=subprocess.STDOUT,
                              env=dict(os.environ, **(env or {})))
    return dict(cmd=' '.join(cmd), returncode=proc.returncode, log=log,
                seconds=round(time.time() - start, 1))


def train_stats(work_dir: str) -> Dict[str, float]:
    """Median step time (s) after the first 5 iterations and peak GPU
    memory (MB, mmengine's ``memory``) from the run's scalar log."""
    logs = sorted(
        os.path.join(d, 'vis_data', 'scalars.json')
        for d in (os.path.join(work_dir, n) for n in os.listdir(work_dir))
        if os.path.isfile(os.path.join(d, 'vis_data', 'scalars.json')))
    if not logs:
        return {}
    times, memory = [], []
    with open(logs[-1]) as f:
        for line in f:
            entry = json.loads(line)
            if 'loss' not in entry:
                continue
            if entry.get('step', 0) > 5 and 'time' in entry:
                times.append(entry['time'])
            if 'memory' in entry:
                memory.append(entry['memory'])
    times.sort()
    return dict(step_s=times[len(times) // 2] if times else float('nan'),
                peak_memory_mb=max(memory) if memory else float('nan'),
                iters_logged=len(times))


def cpu_part(out: str, python: str, report: dict) -> None:
    """What runs without a GPU: both models build and run one forward
    pass at 512x512 on the CPU."""
    code = (
        'import torch, mmseg_didb\n'
        'from mmseg_didb.analysis import build_segmentor, load_config\n'
        'for c in [%r, %r]:\n'
        '    cfg = load_config(c, dict(model=dict(pretrained=None, '
        'backbone=dict(init_cfg=None))))\n'
        '    m = build_segmentor(cfg).eval()\n'
        '    with torch.no_grad():\n'
        '        y = m(torch.randn(1, 3, 512, 512))\n'
        '    print(c, tuple(y.shape))\n' % (BINARY, STOCK))
    report['cpu_forward'] = run([python, '-c', code],
                                osp.join(out, 'cpu_forward.log'))


def main(argv=None) -> int:
    args = parse_args(argv)
    out = osp.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    python = sys.executable
    import torch
    gpu = torch.cuda.is_available()
    report = dict(gpu=gpu, torch=torch.__version__,
                  device=torch.cuda.get_device_name(0) if gpu else None,
                  iters=args.iters)
    data = osp.join(out, 'ade_mosaic')
    report['data'] = run(
        [python, 'tools/make_texture_dataset.py', data, '--size', '512',
         '--num-train', str(args.num_train), '--num-val',
         str(args.num_val)], osp.join(out, 'data.log'))
    if not gpu:
        cpu_part(out, python, report)
        ok = all(report[k]['returncode'] == 0 for k in ('data', 'cpu_forward'))
        print('gpu_check: NO GPU PRESENT (torch.cuda.is_available() is '
              'False). Ran the CPU part only: the 512x512 mosaic data and '
              'one CPU forward pass of the binary and the stock Swin-T '
              'UPerNet (' + ('passed' if ok else 'FAILED, see ' + out) +
              '). Run this script on a machine with a CUDA GPU for the '
              'CUDA tests, fp16 AMP training, NCCL and SyncBN.')
        with open(osp.join(out, 'gpu_check.json'), 'w') as f:
            json.dump(report, f, indent=2)
        return 0 if ok else 1

    report['cuda_tests'] = run(
        ['bash', 'tools/run_tests.sh', *CUDA_TESTS, '-q', '-k', 'cuda'],
        osp.join(out, 'cuda_tests.log'))
    runs = {}
    for name, config in (('binary', BINARY), ('stock', STOCK)):
        work = osp.join(out, name)
        cmd = ['bash', 'tools/dist_train.sh', config, '1', '--work-dir',
               work, '--amp', '--cfg-options',
               *data_options(data, args.iters)]
        runs[name] = run(cmd, osp.join(out, f'train_{name}.log'),
                         env=dict(PORT=str(29500 + len(runs))))
        runs[name].update(train_stats(work) if osp.isdir(work) else {})
    report['train'] = runs
    ckpt = osp.join(out, 'binary', f'iter_{args.iters}.pth')
    test = run([python, 'tools/test.py', BINARY, ckpt, '--work-dir',
                osp.join(out, 'binary_test'), '--cfg-options',
                *data_options(data, args.iters)],
               osp.join(out, 'test_binary.log'))
    with open(test['log']) as f:
        m = re.findall(r'aAcc: ([\d.]+)\s+mIoU: ([\d.]+)', f.read())
    if m:
        test['aAcc'], test['mIoU'] = map(float, m[-1])
    report['test'] = test

    print(f"\ngpu_check on {report['device']} (torch {report['torch']}), "
          f'{args.iters} iterations, 2 x 512x512 per step, fp16 AMP:')
    print(f"{'model':>8} {'step (s)':>10} {'peak memory (MB)':>18} "
          f"{'exit':>5}")
    for name, r in runs.items():
        print(f"{name:>8} {r.get('step_s', float('nan')):10.3f} "
              f"{r.get('peak_memory_mb', float('nan')):18.0f} "
              f"{r['returncode']:5d}")
    b, s = runs['binary'], runs['stock']
    if b.get('step_s') and s.get('step_s'):
        report['ratios'] = dict(
            step=b['step_s'] / s['step_s'],
            memory=b['peak_memory_mb'] / s['peak_memory_mb'])
        print(f"binary / stock: step time {report['ratios']['step']:.2f}x, "
              f"peak memory {report['ratios']['memory']:.2f}x")
    print(f"CUDA tests: exit {report['cuda_tests']['returncode']}; test of "
          f"the binary checkpoint: exit {test['returncode']}"
          + (f", mIoU {test['mIoU']:.2f}" if 'mIoU' in test else ''))
    with open(osp.join(out, 'gpu_check.json'), 'w') as f:
        json.dump(report, f, indent=2)
    print(f"wrote {osp.join(out, 'gpu_check.json')}")
    steps = [report['cuda_tests'], *runs.values(), test]
    return 0 if all(r['returncode'] == 0 for r in steps) else 1


if __name__ == '__main__':
    sys.exit(main())
