"""Build the bit-packed inference model of a trained binary segmentor, check
it against the trained (fake-quantized) model on the validation images, and
time both beside the FP counterpart.

Usage::

    python tools/deploy.py CONFIG CKPT [--out FILE] [--num-images N]
        [--threads N] [--min-agreement 0.999] [--max-miou-diff 0.1]
        [--cfg-options key=value ...]

``CKPT`` is a training checkpoint (``tools/train.py``) or a packed 1-bit
export (``tools/export_binary.py``). The packed model
(:func:`mmseg_didb.deploy.convert_to_packed`) runs every binary linear and
conv on XNOR-popcount kernels, the attention's binary matmuls on packed
kernels, and folds BatchNorms into the binary convs. Both models predict the
config's validation images; the tool prints the pixel argmax agreement, the
mIoU of each (mmseg's ``IoUMetric``) and the inference time per image of the
fake-quantized, the packed and the FP counterpart model (same config with
every preset ``fp``, untrained: timing only), and exits with status 1,
writing nothing, when the agreement is below ``--min-agreement`` or the
mIoUs differ by more than ``--max-miou-diff`` (it says by how much). Both
models run the exact inference arithmetic (``mmseg_didb.binary.exact``), so
they normally agree on every pixel. ``--out`` writes the packed 1-bit file
(sign bits + scales + FP parameters + config) that ``build_packed_model``
turns back into the packed model.
"""
import argparse
import os.path as osp
import sys
import time

import torch

sys.path.insert(0, osp.abspath(osp.join(osp.dirname(__file__), '..')))

from mmengine.config import DictAction  # noqa: E402

from mmseg_didb.compat import add_unsafe_load_argument  # noqa: E402
from mmseg_didb.analysis import (build_segmentor, fp_counterpart,  # noqa
                                 load_config)
from mmseg_didb.analysis.export import (FORMAT, load_packed,  # noqa: E402
                                        read_packed, save_packed)
from mmseg_didb.deploy import convert_to_packed, kernel_variant  # noqa: E402
from mmseg_didb.models.utils import (  # noqa: E402
    load_whole_checkpoint, read_checkpoint, resolve_checkpoint_path)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='model config file')
    parser.add_argument('checkpoint', help='training checkpoint or packed '
                        'export (tools/export_binary.py)')
    parser.add_argument('--out', help='write the packed 1-bit file here')
    parser.add_argument('--num-images', type=int, default=None,
                        help='validation images to use (default: all)')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch threads (default: torch default)')
    parser.add_argument('--min-agreement', type=float, default=0.999)
    parser.add_argument('--max-miou-diff', type=float, default=0.1)
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    add_unsafe_load_argument(parser)
    return parser.parse_args(argv)


def load_trained(model: torch.nn.Module, path: str,
                 allow_unsafe: bool = False) -> str:
    """Load a training checkpoint or a packed export (weights-only
    unpickling unless ``allow_unsafe``); return which."""
    ckpt = read_checkpoint(resolve_checkpoint_path(path),
                           allow_unsafe=allow_unsafe)
    if isinstance(ckpt, dict) and ckpt.get('format') == FORMAT:
        load_packed(model, read_packed(ckpt))
        return 'packed export'
    load_whole_checkpoint(model, ckpt)
    return 'training checkpoint'


def predict_all(model, batches):
    """Predictions (label maps) and seconds per image."""
    preds, seconds, images = [], 0.0, 0
    with torch.no_grad():
        for batch in batches:
            t = time.perf_counter()
            out = model.test_step(batch)
            seconds += time.perf_counter() - t
            images += len(out)
            preds.append(out)
    return preds, seconds / max(images, 1)


def evaluate(cfg, dataset, batches, outputs) -> dict:
    from mmengine.evaluator import Evaluator
    evaluator = Evaluator(cfg.val_evaluator)
    evaluator.dataset_meta = dataset.metainfo
    for batch, out in zip(batches, outputs):
        evaluator.process(data_samples=out, data_batch=batch)
    return evaluator.evaluate(sum(len(o) for o in outputs))


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.cfg_options)
    model = build_segmentor(cfg).eval()
    source = load_trained(model, args.checkpoint, args.unsafe_load)
    packed = convert_to_packed(model)
    print(f'{args.checkpoint} ({source}) -> packed model: '
          f'{packed.pack_report.summary()}; kernels: {kernel_variant()}')

    from mmengine.runner import Runner
    loader = Runner.build_dataloader(cfg.val_dataloader)
    batches = []
    for batch in loader:
        batches.append(batch)
        if args.num_images and sum(len(b['inputs']) for b in batches) >= \
                args.num_images:
            break
    fake_out, t_fake = predict_all(model, batches)
    packed_out, t_packed = predict_all(packed, batches)
    fp_model = build_segmentor(fp_counterpart(cfg)).eval()
    _, t_fp = predict_all(fp_model, batches)

    same = total = 0
    logit_diff = 0.0
    for a_list, b_list in zip(fake_out, packed_out):
        for a, b in zip(a_list, b_list):
            pa, pb = a.pred_sem_seg.data, b.pred_sem_seg.data
            same += int((pa == pb).sum())
            total += pa.numel()
            logit_diff = max(logit_diff, float(
                (a.seg_logits.data - b.seg_logits.data).abs().max()))
    agreement = same / max(total, 1)
    m_fake = evaluate(cfg, loader.dataset, batches, fake_out)
    m_packed = evaluate(cfg, loader.dataset, batches, packed_out)
    diff = abs(m_fake['mIoU'] - m_packed['mIoU'])
    n = sum(len(o) for o in fake_out)
    print(f'{n} validation images, {torch.get_num_threads()} thread(s)')
    print(f"pixel argmax agreement: {agreement * 100:.3f}%   max |logit "
          f"difference| {logit_diff:.3g}   mIoU fake-quantized "
          f"{m_fake['mIoU']:.2f}, packed {m_packed['mIoU']:.2f} "
          f'(|diff| {diff:.2f})')
    print(f'inference per image: fake-quantized {t_fake * 1e3:.1f} ms, '
          f'packed {t_packed * 1e3:.1f} ms, FP counterpart {t_fp * 1e3:.1f} '
          f'ms -> packed is {t_fake / t_packed:.2f}x faster than '
          f'fake-quantized and {t_fp / t_packed:.2f}x faster than FP')
    result = dict(agreement=agreement, logit_diff=logit_diff,
                  miou_fake=m_fake['mIoU'], miou_packed=m_packed['mIoU'],
                  ms_fake=t_fake * 1e3, ms_packed=t_packed * 1e3,
                  ms_fp=t_fp * 1e3, images=n)
    failures = []
    if agreement < args.min_agreement:
        failures.append(
            f'pixel agreement {agreement * 100:.3f}% is '
            f'{(args.min_agreement - agreement) * 100:.3f} points below '
            f'--min-agreement {args.min_agreement * 100:.1f}%')
    if diff > args.max_miou_diff:
        failures.append(f'the mIoUs differ by {diff:.2f}, more than '
                        f'--max-miou-diff {args.max_miou_diff}')
    if failures:
        print('check: FAILED: ' + '; '.join(failures) + '. The packed model '
              'does not reproduce the trained one'
              + (f'; {args.out} was not written' if args.out else ''))
        sys.exit(1)
    print(f'check: PASSED (agreement >= {args.min_agreement * 100:.1f}%, '
          f'mIoU within {args.max_miou_diff})')
    if args.out:
        save_packed(model, args.out, config=cfg.pretty_text)
        print(f'wrote {args.out} (1-bit export; build_packed_model(path) '
              'rebuilds the packed model)')
    return result


if __name__ == '__main__':
    main()
