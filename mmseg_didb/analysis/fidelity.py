"""Fidelity diagnostic: how much of a trained FP model each binary variant
keeps, per transformer block, before any binary training.

Every variant is the benchmark config plus its overrides
(:data:`~mmseg_didb.analysis.accuracy.VARIANTS`), built and loaded from one
FP checkpoint exactly as the accuracy benchmark starts its runs (weights the
FP model has are copied, binary-only parameters keep their initialisation).
The FP model itself (variant ``fp``) is the reference. On a batch of
validation images, forward hooks record in every ``DIDBBlock``:

* the attention probabilities ``A = softmax(S)`` (the input of the
  probability binarizer) and the map that multiplies ``V`` (its output:
  ``Ab`` in ``{0, a}`` for binary presets, ``A`` for FP ones);
* the block output (the residual stream after the block).

Per block and variant (docs/results.md, "Fidelity"):

* ``attn_kl``: mean over attention rows of ``KL(A_fp || A_variant)`` in nats,
  how far the variant's scores (binary ``Q K^T``, HFSC) move the attention
  distribution;
* ``attn_cos``: mean cosine similarity of the rows of ``A_fp`` and of the
  variant's binarized map (scale-free, so ``{0, a}`` maps compare directly),
  how much of the FP attention pattern the map applied to ``V`` keeps;
* ``out_cos`` / ``out_rel``: cosine similarity (per token) and relative
  error ``||y - y_fp|| / ||y_fp||`` of the block output, the error that
  reaches the next block.

The variant's mIoU on the validation split before binary training (mmseg's
``IoUMetric``) completes the row.
"""
import math
import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..binary import exact_arithmetic

__all__ = [
    'BlockFidelity', 'VariantFidelity', 'attention_kl', 'row_cosine',
    'relative_error', 'record_blocks', 'compare_records',
    'build_from_fp_checkpoint', 'evaluate_miou', 'fidelity_report',
    'format_fidelity'
]


@dataclass
class BlockFidelity:
    """The FP-distance figures of one block (see the module docstring)."""
    block: str
    attn_kl: float
    attn_cos: float
    out_cos: float
    out_rel: float


@dataclass
class VariantFidelity:
    """One variant: per-block figures, their means and the mIoU."""
    variant: str
    blocks: List[BlockFidelity]
    mIoU: Optional[float] = None
    aAcc: Optional[float] = None

    def mean(self, field: str) -> float:
        """Mean of one :class:`BlockFidelity` field over the blocks."""
        return sum(getattr(b, field) for b in self.blocks) / len(self.blocks)


def attention_kl(p: Tensor, q: Tensor, eps: float = 1e-12) -> float:
    """Mean over rows of ``KL(p || q)`` (nats) of two attention maps whose
    last dimension sums to one (rows of ``q`` are floored at ``eps``)."""
    p, q = p.double(), q.double()
    kl = (p * (torch.log(p.clamp_min(eps)) - torch.log(q.clamp_min(eps))))
    return float(kl.sum(-1).mean())


def row_cosine(a: Tensor, b: Tensor, eps: float = 1e-12) -> float:
    """Mean cosine similarity of the last-dimension rows of ``a`` and ``b``
    (an all-zero row has similarity 0 with anything)."""
    return float(F.cosine_similarity(a.double(), b.double(), dim=-1,
                                     eps=eps).mean())


def relative_error(x: Tensor, ref: Tensor) -> float:
    """``||x - ref|| / ||ref||`` over the whole tensor."""
    ref = ref.double()
    return float((x.double() - ref).norm() / ref.norm().clamp_min(1e-30))


def _blocks(model: nn.Module) -> Dict[str, nn.Module]:
    from ..models.layers import DIDBBlock
    found = {name: m for name, m in model.named_modules()
             if isinstance(m, DIDBBlock)}
    if not found:
        raise ValueError(
            f'{type(model).__name__} has no DIDBBlock: the fidelity '
            'diagnostic needs a DIDBSwin or DIDBViT backbone')
    return found


@torch.no_grad()
def record_blocks(model: nn.Module, inputs: Tensor) -> Dict[str, dict]:
    """Run ``model.extract_feat(inputs)`` and record, per ``DIDBBlock``
    (by module name), ``probs`` (the attention probabilities), ``attn`` (the
    map applied to ``V``) and ``out`` (the block output)."""
    records: Dict[str, dict] = {}
    handles = []

    def on_quant(name: str):
        def hook(module, args, output):
            records[name]['probs'] = args[0].detach().clone()
            records[name]['attn'] = output.detach().clone()
        return hook

    def on_block(name: str):
        def hook(module, args, output):
            records[name]['out'] = output.detach().clone()
        return hook

    try:
        for name, block in _blocks(model).items():
            records[name] = {}
            handles.append(block.attn.attn_quant.register_forward_hook(
                on_quant(name)))
            handles.append(block.register_forward_hook(on_block(name)))
        model.eval()
        model.extract_feat(inputs)
    finally:
        for h in handles:
            h.remove()
    return records


def compare_records(ref: Dict[str, dict],
                    rec: Dict[str, dict]) -> List[BlockFidelity]:
    """Per-block figures of ``rec`` against the FP reference ``ref``."""
    if list(ref) != list(rec):
        raise ValueError('the two models have different blocks: '
                         f'{list(ref)} vs {list(rec)}')
    out = []
    for name in ref:
        r, v = ref[name], rec[name]
        if r['probs'].shape != v['probs'].shape:
            raise ValueError(f'{name}: attention maps of different shapes '
                             f'{tuple(r["probs"].shape)} and '
                             f'{tuple(v["probs"].shape)}')
        out.append(BlockFidelity(
            block=name,
            attn_kl=attention_kl(r['probs'], v['probs']),
            attn_cos=row_cosine(r['probs'], v['attn']),
            out_cos=row_cosine(r['out'], v['out']),
            out_rel=relative_error(v['out'], r['out'])))
    return out


def build_from_fp_checkpoint(config, options: dict, checkpoint: str,
                             seed: int = 0,
                             allow_unsafe: bool = False) -> nn.Module:
    """The benchmark's start of a run: the config with ``options`` built,
    initialised (``init_weights``, seeded) and loaded non-strictly from the
    FP ``checkpoint`` (binary-only parameters keep their initialisation).

    Raises:
        ValueError: the checkpoint has keys the model lacks (not a
            checkpoint of this config's FP model), or shares none with it.
    """
    from ..models.utils.checkpoint import read_state_dict
    from .builder import build_segmentor, load_config
    torch.manual_seed(seed)
    model = build_segmentor(load_config(config, options))
    model.init_weights()
    state = read_state_dict(checkpoint, allow_unsafe=allow_unsafe)
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys or len(result.missing_keys) == len(
            model.state_dict()):
        raise ValueError(
            f'{checkpoint} is not a checkpoint of this config\'s FP model '
            f'({len(result.unexpected_keys)} keys the model lacks, e.g. '
            f'{result.unexpected_keys[:3]}): give the stage-0 checkpoint of '
            'the accuracy benchmark for this config (pretrain.json names it)')
    return model.eval()


@torch.no_grad()
def evaluate_miou(model: nn.Module, dataloader,
                  max_images: Optional[int] = None) -> Dict[str, float]:
    """mIoU / aAcc of ``model`` with mmseg's ``IoUMetric`` on (the first
    ``max_images`` of) an mmseg validation dataloader."""
    from mmengine.evaluator import Evaluator
    from mmseg.evaluation import IoUMetric
    evaluator = Evaluator(IoUMetric(iou_metrics=['mIoU']))
    evaluator.dataset_meta = dataloader.dataset.metainfo
    model.eval()
    seen = 0
    for batch in dataloader:
        if max_images is not None and seen >= max_images:
            break
        outputs = model.val_step(batch)
        evaluator.process(outputs, batch)
        seen += len(outputs)
    res = evaluator.evaluate(seen)
    return dict(mIoU=float(res['mIoU']), aAcc=float(res['aAcc']))


def fidelity_report(config, checkpoint: str, variants: Sequence[str],
                    dataloader, num_images: int = 16,
                    eval_images: Optional[int] = None,
                    cfg_options: Optional[dict] = None,
                    allow_unsafe: bool = False,
                    log=print) -> List[VariantFidelity]:
    """The diagnostic: ``fp`` (the reference) and each of ``variants``,
    loaded from the FP ``checkpoint``, compared on the first ``num_images``
    validation images and (``eval_images`` != 0) evaluated on the
    validation split (all of it when ``eval_images`` is None)."""
    from .accuracy import variant_options
    names = ['fp'] + [v for v in variants if v != 'fp']
    batch = next(iter(dataloader))
    images = batch['inputs'][:num_images]
    if len(images) < num_images:
        raise ValueError(f'the first validation batch holds {len(images)} '
                         f'images, fewer than num_images={num_images}: '
                         'lower --num-images or raise the batch size')
    ref = None
    report = []
    for name in names:
        start = time.time()
        options = dict(cfg_options or {}, **variant_options(name, config))
        model = build_from_fp_checkpoint(config, options, checkpoint,
                                         allow_unsafe=allow_unsafe)
        inputs = model.data_preprocessor(
            dict(inputs=images, data_samples=batch['data_samples'][
                :num_images]), False)['inputs']
        # The training arithmetic: the exact inference path gives the same
        # figures up to float rounding at twice the CPU time.
        with exact_arithmetic(False):
            rec = record_blocks(model, inputs)
            if ref is None:
                ref = rec
            row = VariantFidelity(name, compare_records(ref, rec))
            if eval_images != 0:
                row.mIoU, row.aAcc = evaluate_miou(model, dataloader,
                                                   eval_images).values()
        report.append(row)
        log(f'{name}: {time.time() - start:.1f} s')
    return report


def _fmt(x: Optional[float], digits: int = 3) -> str:
    return '-' if x is None or math.isnan(x) else f'{x:.{digits}f}'


def format_fidelity(report: List[VariantFidelity],
                    per_block: bool = True) -> str:
    """Markdown: one summary row per variant (block means and mIoU), then
    (``per_block``) one row per block and variant."""
    lines = ['| variant | attn KL (nats) | attn cos | block out cos | '
             'block out rel. err. | mIoU before training |',
             '|---|---:|---:|---:|---:|---:|']
    for r in report:
        lines.append(
            f"| `{r.variant}` | {_fmt(r.mean('attn_kl'))} | "
            f"{_fmt(r.mean('attn_cos'))} | {_fmt(r.mean('out_cos'))} | "
            f"{_fmt(r.mean('out_rel'))} | {_fmt(r.mIoU, 2)} |")
    if per_block:
        lines += ['', '| variant | block | attn KL | attn cos | out cos | '
                  'out rel. err. |', '|---|---|---:|---:|---:|---:|']
        for r in report:
            for b in r.blocks:
                lines.append(
                    f'| `{r.variant}` | {b.block} | {_fmt(b.attn_kl)} | '
                    f'{_fmt(b.attn_cos)} | {_fmt(b.out_cos)} | '
                    f'{_fmt(b.out_rel)} |')
    return '\n'.join(lines)


def report_json(report: List[VariantFidelity]) -> List[dict]:
    """JSON-ready rows (per-block figures and their means)."""
    fields = ('attn_kl', 'attn_cos', 'out_cos', 'out_rel')
    return [dict(variant=r.variant, mIoU=r.mIoU, aAcc=r.aAcc,
                 **{f: r.mean(f) for f in fields},
                 blocks=[asdict(b) for b in r.blocks]) for r in report]
