"""Per-stage wall time of a packed segmentor's inference, split into packed
binary kernels and FP glue (the breakdown of the benchmark)."""
import time
from typing import Dict, List, Optional, Tuple

from torch import nn

__all__ = ['StageTimer', 'format_breakdown']


class StageTimer:
    """Wall time of a segmentor's stages in one forward, split into packed
    binary kernels and FP glue.

    Stages: the backbone's stem (``patch_embed``), each entry of its
    ``layers`` (Swin stages / ViT blocks), its other parts, the neck, the
    decode head. Inside each stage, the time spent in the packed kernel
    calls (binarize-and-pack, XNOR / AND-popcount products and what is fused
    into them: a unit's norm, shortcut and (R)PReLU, the attention core of a
    binary attention) is the "binary kernels" column; the rest (block
    LayerNorms, residual additions, resizes, concatenations, FP convs) is
    "FP glue". Use as a context manager around one inference.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.stages: List[Tuple[str, nn.Module]] = []
        backbone = getattr(model, 'backbone', None)
        if backbone is not None:
            if getattr(backbone, 'patch_embed', None) is not None:
                self.stages.append(('backbone.patch_embed',
                                    backbone.patch_embed))
            for i, m in enumerate(getattr(backbone, 'layers', [])):
                self.stages.append((f'backbone.layers.{i}', m))
        for name in ('neck', 'decode_head'):
            if getattr(model, name, None) is not None:
                self.stages.append((name, getattr(model, name)))
        self.total: Dict[str, float] = {}
        self.kernel: Dict[str, float] = {}
        self._patched: list = []
        self._stack: List[str] = []

    def _timer(self, fn, stage: Optional[str]):
        """Wrap a bound method: stage time (``stage`` given) or kernel time
        (attributed to the stage that is running; a kernel call inside
        another one, e.g. the q/k/v units of a fused attention core, is
        counted once)."""

        def timed(*args, **kwargs):
            if stage is not None:
                self._stack.append(stage)
            else:
                self._depth += 1
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t
                if stage is not None:
                    self._stack.pop()
                    self.total[stage] = self.total.get(stage, 0.0) + dt
                else:
                    self._depth -= 1
                    if self._depth == 0:
                        key = self._stack[-1] if self._stack else 'other'
                        self.kernel[key] = self.kernel.get(key, 0.0) + dt

        return timed

    def _patch(self, module: nn.Module, method: str,
               stage: Optional[str]) -> None:
        # an instance attribute shadows the class method, so direct calls of
        # ``module.forward`` (mmseg's heads call ``self.forward``) are timed
        setattr(module, method, self._timer(getattr(module, method), stage))
        self._patched.append((module, method))

    def __enter__(self) -> 'StageTimer':
        from ..deploy import (PackedAttention, PackedAttentionMatmuls,
                              PackedBinaryConv2d, PackedBinaryLinear)
        self._depth = 0
        for name, m in self.stages:
            self._patch(m, 'forward', name)
        for m in self.model.modules():
            if isinstance(m, PackedBinaryLinear):
                self._patch(m, 'forward_rows', None)
            elif isinstance(m, PackedBinaryConv2d):
                self._patch(m, 'forward', None)
            elif isinstance(m, PackedAttentionMatmuls):
                self._patch(m, 'similarity', None)
                self._patch(m, 'aggregate', None)
                if isinstance(m, PackedAttention):
                    self._patch(m, 'attend', None)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.elapsed = time.perf_counter() - self._start
        for m, meth in reversed(self._patched):
            if meth in m.__dict__:
                del m.__dict__[meth]  # back to the class method
        self._patched.clear()

    def report(self) -> List[dict]:
        """Rows ``dict(stage, total_s, kernels_s, glue_s)``; the last row
        is everything outside the stages (pre/post-processing)."""
        rows = []
        for name, _ in self.stages:
            t = self.total.get(name, 0.0)
            k = self.kernel.get(name, 0.0)
            rows.append(dict(stage=name, total_s=t, kernels_s=k,
                             glue_s=t - k))
        rest = self.elapsed - sum(r['total_s'] for r in rows)
        rows.append(dict(stage='rest (output norms, resize, argmax)',
                         total_s=rest, kernels_s=0.0, glue_s=rest))
        return rows


def format_breakdown(result: 'BenchmarkResult') -> str:
    """Table of a result's per-stage breakdown."""
    rows = result.breakdown or []
    total = sum(r['total_s'] for r in rows)
    kern = sum(r['kernels_s'] for r in rows)
    lines = [f'per-stage breakdown of {result.name} (one inference, '
             f'{total * 1e3:.0f} ms; binary kernels {kern * 1e3:.0f} ms = '
             f'{100 * kern / max(total, 1e-9):.0f}%, FP glue '
             f'{(total - kern) * 1e3:.0f} ms)',
             f"{'stage':28s} {'total ms':>9s} {'kernels ms':>11s} "
             f"{'glue ms':>9s}"]
    for r in rows:
        lines.append(f"{r['stage']:28s} {r['total_s'] * 1e3:9.1f} "
                     f"{r['kernels_s'] * 1e3:11.1f} {r['glue_s'] * 1e3:9.1f}")
    return '\n'.join(lines)
