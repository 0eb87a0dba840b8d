"""Training-step / inference timing and peak memory of segmentors.

What is timed, per model, on random data of a fixed shape:

* ``train``: one optimisation step, ``model.loss`` (forward incl. the
  segmentor's extra losses) + ``parse_losses`` + ``backward`` + AdamW
  ``step`` (+ ``zero_grad``), model in train mode;
* ``infer``: ``model.predict`` under ``torch.no_grad`` in eval mode (the
  config's ``test_cfg``, resize to the input size included).

Each phase runs ``warmup`` untimed iterations, then ``repeats`` timed ones;
the median is reported. On CUDA every timing is bracketed by
``torch.cuda.synchronize``. Peak memory is the phase's peak above the
memory in use before the model was built (so it includes parameters,
optimizer state and activations): ``torch.cuda.max_memory_allocated`` on
CUDA; on CPU the peak resident set size (Linux ``VmHWM``, reset before each
phase through ``/proc/self/clear_refs``), which also counts allocator caching
and is therefore coarser.

Binary layers here are simulated in floating point (fake quantization), as in
training: they cost *more* time than FP layers in PyTorch. The 1-bit speed-up
measured by BOPs needs bit-packed kernels (XNOR/popcount) at deployment.
"""
import gc
import re
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from .stage_timer import StageTimer

_CLEAR_REFS = '/proc/self/clear_refs'
_STATUS = '/proc/self/status'


def _rss_kb(field_name: str) -> Optional[int]:
    try:
        with open(_STATUS) as f:
            m = re.search(rf'{field_name}:\s+(\d+)', f.read())
        return int(m.group(1)) if m else None
    except OSError:
        return None


def _reset_cpu_peak() -> bool:
    try:
        with open(_CLEAR_REFS, 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


class MemoryMeter:
    """Peak memory of a code region, in bytes, on CUDA or (Linux) CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == 'cuda'
        self.device = device

    def current(self) -> Optional[int]:
        if self.cuda:
            return torch.cuda.memory_allocated(self.device)
        kb = _rss_kb('VmRSS')
        return None if kb is None else kb * 1024

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            _reset_cpu_peak()

    def peak(self) -> Optional[int]:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device)
        kb = _rss_kb('VmHWM')
        return None if kb is None else kb * 1024


@dataclass
class PhaseResult:
    """Timings (seconds) and peak memory (bytes above baseline) of a phase;
    ``warmup_times`` are the untimed first steps (with ``torch.compile``,
    where the compilation happens)."""
    times: List[float] = field(default_factory=list)
    peak_bytes: Optional[int] = None
    warmup_times: List[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else float('nan')

    def to_dict(self) -> dict:
        return dict(median_s=self.median, times_s=self.times,
                    warmup_s=self.warmup_times,
                    peak_mb=None if self.peak_bytes is None else
                    self.peak_bytes / 2**20)


@dataclass
class BenchmarkResult:
    """Benchmark of one model."""
    name: str
    params: int
    train: PhaseResult
    infer: PhaseResult
    breakdown: Optional[List[dict]] = None

    def to_dict(self) -> dict:
        out = dict(name=self.name, params=self.params,
                   train=self.train.to_dict(), infer=self.infer.to_dict())
        if self.breakdown is not None:
            out['breakdown'] = self.breakdown
        return out


def make_batch(batch_size: int, shape: Tuple[int, int], num_classes: int,
               device: torch.device, seed: int = 0):
    """Random normalised images and label maps as mmseg inputs/data samples."""
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    g = torch.Generator().manual_seed(seed)
    H, W = shape
    inputs = torch.randn(batch_size, 3, H, W, generator=g).to(device)
    samples = []
    for _ in range(batch_size):
        label = torch.randint(0, num_classes, (1, H, W), generator=g)
        s = SegDataSample(metainfo=dict(img_shape=(H, W), ori_shape=(H, W),
                                        pad_shape=(H, W)))
        s.gt_sem_seg = PixelData(data=label.to(device))
        samples.append(s)
    return inputs, samples


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _run_phase(step: Callable[[], None], warmup: int, repeats: int,
               device: torch.device, meter: MemoryMeter,
               baseline: Optional[int]) -> PhaseResult:
    result = PhaseResult()
    meter.reset_peak()
    for _ in range(warmup):
        t0 = time.perf_counter()
        step()
        _sync(device)
        result.warmup_times.append(time.perf_counter() - t0)
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        result.times.append(time.perf_counter() - t0)
    peak = meter.peak()
    if peak is not None and baseline is not None:
        result.peak_bytes = max(peak - baseline, 0)
    return result


def benchmark_model(build: Callable[[], nn.Module], name: str,
                    shape: Tuple[int, int] = (512, 512), batch_size: int = 2,
                    warmup: int = 1, repeats: int = 3,
                    device: Optional[str] = None, lr: float = 1e-4,
                    phases: Tuple[str, ...] = ('train', 'infer'),
                    packed: bool = False,
                    compile: bool = False) -> BenchmarkResult:
    """Time training steps and inference of the model returned by ``build``.

    Args:
        build: returns a fresh segmentor (on CPU); called after the memory
            baseline is taken.
        name: label of the result.
        shape: input (H, W).
        batch_size: images per step.
        warmup: untimed iterations per phase.
        repeats: timed iterations per phase (median reported).
        device: 'cpu', 'cuda' or None (CUDA when available).
        lr: AdamW learning rate of the training step.
        phases: subset of ('train', 'infer').
        packed: time inference of the bit-packed model
            (:func:`mmseg_didb.deploy.convert_to_packed`; a model without
            binary layers converts to itself), and record a per-stage
            breakdown (:class:`StageTimer`) of one more inference.
        compile: run the training step's ``model.loss`` (its backward
            compiled with it) through ``torch.compile`` (default inductor
            backend), as mmengine's ``compile=True`` compiles the training
            step only; the optimizer step stays eager, as with the binary
            schedules' ``CompilableOptimWrapperConstructor``. Needs
            ``warmup >= 2``: the first step compiles, the second recompiles
            what depends on state set by the first (initialised binarizer
            scales, filled caches).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError('repeats must be >= 1 and warmup >= 0')
    if compile and warmup < 2:
        raise ValueError('compile=True needs warmup >= 2 (compilation '
                         'happens in the first two steps)')
    wrap = torch.compile if compile else (lambda fn: fn)
    dev = torch.device(device or ('cuda' if torch.cuda.is_available()
                                  else 'cpu'))
    gc.collect()
    if dev.type == 'cuda':
        torch.cuda.empty_cache()
    meter = MemoryMeter(dev)
    baseline = meter.current()
    model = build().to(dev)
    params = sum(p.numel() for p in model.parameters())
    num_classes = int(model.decode_head.num_classes)
    inputs, samples = make_batch(batch_size, shape, num_classes, dev)
    results = {}

    if 'train' in phases:
        model.train()
        optim = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad], lr=lr)

        loss_fn = wrap(model.loss)

        def train_step() -> None:
            losses = loss_fn(inputs, samples)
            loss, _ = model.parse_losses(losses)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()

        results['train'] = _run_phase(train_step, warmup, repeats, dev, meter,
                                      baseline)
        del optim
        model.zero_grad(set_to_none=True)
        gc.collect()

    breakdown = None
    if 'infer' in phases:
        model.eval()
        if packed:
            from ..deploy import convert_to_packed
            with torch.no_grad():  # data-dependent binarizer scales
                model._forward(inputs[:1])
            model = convert_to_packed(model, inplace=True)

        def infer_step() -> None:
            with torch.no_grad():
                model.predict(inputs, samples)

        results['infer'] = _run_phase(infer_step, warmup, repeats, dev, meter,
                                      baseline)
        if packed:
            with StageTimer(model) as timer:
                infer_step()
            breakdown = timer.report()
    del model
    gc.collect()
    return BenchmarkResult(name=name, params=params,
                           train=results.get('train', PhaseResult()),
                           infer=results.get('infer', PhaseResult()),
                           breakdown=breakdown)


def _isolated_child(cfg_dict: dict, name: str, kwargs: dict, queue) -> None:
    """Child-process body of :func:`benchmark_isolated`."""
    try:
        threads = kwargs.pop('threads', None)
        if threads:
            torch.set_num_threads(threads)
        mmap_threshold = kwargs.pop('mmap_threshold', None)
        if mmap_threshold is not None:
            from ..engine.allocator import set_malloc_mmap_threshold
            set_malloc_mmap_threshold(mmap_threshold)
        from mmengine.config import Config

        from .builder import build_segmentor
        cfg = Config(cfg_dict)
        res = benchmark_model(lambda: build_segmentor(cfg), name, **kwargs)
        queue.put(('ok', res))
    except BaseException as e:  # report, the parent raises
        import traceback
        queue.put(('error', f'{type(e).__name__}: {e}\n'
                   f'{traceback.format_exc()}'))


def benchmark_isolated(config, name: str, threads: Optional[int] = None,
                       phases: Tuple[str, ...] = ('train', 'infer'),
                       mmap_threshold: Optional[int] = None,
                       **kwargs) -> BenchmarkResult:
    """:func:`benchmark_model` with each phase in a fresh child process.

    On CPU the resident-set peak of a process also holds memory freed by
    earlier work (the C allocator keeps it), so one process per model and
    phase is what makes the CPU memory numbers comparable.

    Args:
        config: Config or dict with the ``model`` to build.
        name: label of the result.
        threads: torch threads in the child.
        phases: phases to run, each in its own child.
        mmap_threshold: fix the C allocator's mmap threshold in the child
            (:func:`~mmseg_didb.engine.set_malloc_mmap_threshold`, as
            :class:`~mmseg_didb.engine.CPUAllocatorHook` does in training);
            None leaves the allocator as it is.
        **kwargs: passed to :func:`benchmark_model`.
    """
    import multiprocessing as mp

    from .builder import load_config
    cfg_dict = load_config(config).to_dict()
    ctx = mp.get_context('spawn')
    out = BenchmarkResult(name=name, params=0, train=PhaseResult(),
                          infer=PhaseResult())
    for phase in phases:
        queue = ctx.Queue()
        proc = ctx.Process(
            target=_isolated_child,
            args=(cfg_dict, name, dict(kwargs, threads=threads,
                                       mmap_threshold=mmap_threshold,
                                       phases=(phase, )), queue))
        proc.start()
        status, res = queue.get()
        proc.join()
        if status != 'ok':
            raise RuntimeError(f'benchmark of {name} ({phase}) failed in the '
                               f'child process:\n{res}')
        out.params = res.params
        setattr(out, phase, getattr(res, phase))
        if res.breakdown is not None:
            out.breakdown = res.breakdown
    return out


def format_results(results: List[BenchmarkResult], device: str,
                   shape: Tuple[int, int], batch_size: int,
                   threads: Optional[int] = None) -> str:
    """Table of medians and peaks, plus the ratios of the first model to
    each of the others."""

    def ms(x: float) -> str:
        return f'{x * 1e3:.1f}' if x == x else '-'

    def mb(x: Optional[int]) -> str:
        return '-' if x is None else f'{x / 2**20:.0f}'

    head = ('model', 'train ms', 'train peak MB', 'infer ms', 'infer peak MB')
    rows = [(r.name, ms(r.train.median), mb(r.train.peak_bytes),
             ms(r.infer.median), mb(r.infer.peak_bytes)) for r in results]
    def ratio(x, y) -> str:
        return f'{x / y:.2f}x' if x and y and x == x and y == y else '-'

    a = results[0]
    for b in results[1:]:
        rows.append((f'ratio {a.name} / {b.name}',
                     ratio(a.train.median, b.train.median),
                     ratio(a.train.peak_bytes, b.train.peak_bytes),
                     ratio(a.infer.median, b.infer.median),
                     ratio(a.infer.peak_bytes, b.infer.peak_bytes)))
    widths = [max(len(str(r[i])) for r in [head] + rows)
              for i in range(len(head))]
    threads = threads or torch.get_num_threads()
    lines = [f'device: {device}, input {batch_size}x3x{shape[0]}x{shape[1]}, '
             f'torch threads: {threads}']
    for r in [head] + rows:
        lines.append('  '.join(str(v).ljust(w) if i == 0 else str(v).rjust(w)
                               for i, (v, w) in enumerate(zip(r, widths))))
    return '\n'.join(lines)


def describe_device(device: str) -> str:
    """Human-readable device name (GPU model, or CPU model and cores)."""
    if device.startswith('cuda'):
        return f'cuda ({torch.cuda.get_device_name(0)})'
    import os
    cpu = 'cpu'
    try:
        with open('/proc/cpuinfo') as f:
            m = re.search(r'model name\s*:\s*(.+)', f.read())
        if m:
            cpu = m.group(1).strip()
    except OSError:
        pass
    return f'cpu ({cpu}, {os.cpu_count()} cores)'


def results_dict(results: List[BenchmarkResult]) -> Dict[str, dict]:
    return {r.name: r.to_dict() for r in results}
