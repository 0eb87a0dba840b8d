"""The packed 1-bit model against the engines a deployer would otherwise
pick: ONNX Runtime and OpenVINO, in FP32 and INT8.

One task for every engine: a normalised ``(1, 3, H, W)`` image to the label
map at ``H x W`` (the segmentor's logits, bilinearly resized to the input and
reduced by argmax, as mmseg predicts). :class:`LabelMap` is that task as a
PyTorch module; the FP models are exported to ONNX with it
(:func:`export_onnx`, the dynamo exporter), quantized statically to INT8 for
ONNX Runtime (QDQ, per-channel weights, :func:`quantize_onnxruntime`) and
with NNCF's post-training quantization for OpenVINO
(:func:`quantize_openvino`), calibrated on real-photo images. Each engine
runs at a fixed thread count (:class:`Engine`); :func:`time_engine` takes
the median of repeated runs.

The engines are an optional extra: ``pip install -e .[peers]`` (or
``pip install -r requirements/peers.txt -c requirements/constraints.txt``).
"""
import importlib.util
import os
import os.path as osp
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..deploy.labels import resize_argmax

__all__ = ['PEER_PACKAGES', 'missing_peers', 'require_peers', 'LabelMap',
           'Engine', 'torch_engine', 'export_onnx', 'quantize_onnxruntime',
           'onnxruntime_engine', 'openvino_model', 'quantize_openvino',
           'openvino_engine', 'time_engine', 'agreement',
           'calibration_images', 'ENGINES', 'run_peer_bench',
           'format_peer_table']

#: import name -> pip name of the optional engines
PEER_PACKAGES = {'onnx': 'onnx', 'onnxscript': 'onnxscript',
                 'onnxruntime': 'onnxruntime', 'openvino': 'openvino',
                 'nncf': 'nncf'}


def missing_peers() -> List[str]:
    """The optional engine packages that are not installed."""
    return [pip for mod, pip in PEER_PACKAGES.items()
            if importlib.util.find_spec(mod) is None]


def require_peers() -> None:
    """Raise ImportError naming the install command if an engine is
    missing."""
    missing = missing_peers()
    if missing:
        raise ImportError(
            f'the peer engines are not installed ({", ".join(missing)}); '
            'install the optional extra: pip install -e .[peers] (or pip '
            'install -r requirements/peers.txt -c '
            'requirements/constraints.txt)')


class LabelMap(nn.Module):
    """The benchmark task: a normalised image to its label map.

    ``argmax_c resize(model(x))`` with ``model(x)`` the segmentor's logits
    (mmseg's ``mode='tensor'``) bilinearly resized to the input size.

    Args:
        segmentor: the model.
        fused: resize and argmax in one pass
            (:func:`mmseg_didb.deploy.resize_argmax`, the packed model's
            deployment path); otherwise PyTorch's interpolation and argmax
            (what the ONNX export holds).
    """

    def __init__(self, segmentor: nn.Module, fused: bool = False) -> None:
        super().__init__()
        self.segmentor = segmentor
        self.fused = fused

    def forward(self, x: Tensor) -> Tensor:
        logits = self.segmentor(x)
        if self.fused:
            return resize_argmax(logits, x.shape[-2:])
        logits = F.interpolate(logits, size=x.shape[-2:], mode='bilinear',
                               align_corners=False)
        return logits.argmax(dim=1)


class Engine:
    """A runnable engine: ``run(x)`` maps a float32 ``(1, 3, H, W)`` array to
    the int64 label map ``(1, H, W)``."""

    def __init__(self, name: str, run: Callable[[np.ndarray], np.ndarray],
                 threads: int) -> None:
        self.name = name
        self.run = run
        self.threads = threads


def torch_engine(name: str, module: nn.Module, threads: int) -> Engine:
    """A PyTorch module (e.g. the packed model's :class:`LabelMap`) on
    ``threads`` torch threads."""

    def run(x: np.ndarray) -> np.ndarray:
        torch.set_num_threads(threads)
        with torch.no_grad():
            return module(torch.from_numpy(x)).numpy()

    return Engine(name, run, threads)


def export_onnx(module: nn.Module, example: Tensor, path: str) -> str:
    """Export ``module`` (a :class:`LabelMap`) to ONNX with the dynamo
    exporter (the legacy one cannot export the PPM's adaptive pooling)."""
    require_peers()
    module.eval()
    with torch.no_grad():
        torch.onnx.export(module, (example, ), path, dynamo=True,
                          input_names=['image'], output_names=['labels'],
                          verbose=False)
    return path


class _Calibration:
    """ONNX Runtime's calibration data reader over a list of images."""

    def __init__(self, name: str, images: Sequence[np.ndarray]) -> None:
        self.name = name
        self.images = list(images)
        self.i = 0

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        if self.i >= len(self.images):
            return None
        self.i += 1
        return {self.name: self.images[self.i - 1]}

    def rewind(self) -> None:
        self.i = 0


def quantize_onnxruntime(fp32_path: str, int8_path: str,
                         images: Sequence[np.ndarray]) -> str:
    """Static INT8 quantization for ONNX Runtime: QDQ format, per-channel
    int8 weights, uint8 activations calibrated (min-max) on ``images``."""
    require_peers()
    import onnx
    from onnxruntime.quantization import (QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process
    prepared = int8_path + '.pre.onnx'
    quant_pre_process(fp32_path, prepared, skip_optimization=False)
    name = onnx.load(prepared, load_external_data=False).graph.input[0].name
    quantize_static(prepared, int8_path, _Calibration(name, images),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)
    return int8_path


def onnxruntime_engine(name: str, path: str, threads: int) -> Engine:
    """An ONNX Runtime CPU session with ``threads`` intra-op threads."""
    require_peers()
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = \
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(path, options,
                                   providers=['CPUExecutionProvider'])
    input_name = session.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: x})[0]

    return Engine(name, run, threads)


def openvino_model(onnx_path: str):
    """The OpenVINO model of an ONNX file."""
    require_peers()
    import openvino as ov
    return ov.convert_model(onnx_path)


def quantize_openvino(model, images: Sequence[np.ndarray]):
    """NNCF post-training INT8 quantization of an OpenVINO model,
    calibrated on ``images`` (NNCF's defaults otherwise)."""
    require_peers()
    import nncf
    return nncf.quantize(model, nncf.Dataset(list(images)),
                         subset_size=len(images))


def openvino_engine(name: str, model, threads: int) -> Engine:
    """An OpenVINO CPU compiled model with ``threads`` inference threads, at
    the CPU plugin's default precision (bf16 where the CPU has it)."""
    require_peers()
    import openvino as ov
    compiled = ov.Core().compile_model(
        model, 'CPU', {'INFERENCE_NUM_THREADS': threads,
                       'PERFORMANCE_HINT': 'LATENCY'})
    request = compiled.create_infer_request()

    def run(x: np.ndarray) -> np.ndarray:
        request.infer({0: x})
        return request.get_output_tensor(0).data.copy()

    return Engine(name, run, threads)


def time_engine(engine: Engine, x: np.ndarray, warmup: int = 2,
                repeats: int = 7) -> Dict[str, float]:
    """Median and minimum milliseconds of ``engine.run(x)``."""
    for _ in range(warmup):
        engine.run(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        engine.run(x)
        times.append((time.perf_counter() - start) * 1e3)
    return dict(median_ms=statistics.median(times), min_ms=min(times))


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of pixels where two label maps agree."""
    return float((np.asarray(a) == np.asarray(b)).mean())


def calibration_images(root: str, size: int, count: int, mean: Sequence,
                       std: Sequence, bgr_to_rgb: bool) -> List[np.ndarray]:
    """``count`` normalised ``(1, 3, size, size)`` float32 images of a
    texture-mosaic build (real photographs, built under ``root`` if
    missing), normalised as the segmentor's data preprocessor does."""
    import cv2

    from ..datasets.texture_maker import MosaicSpec, build_dataset, is_built
    spec = MosaicSpec(seed=0, size=size, num_train=count, num_val=1)
    if not is_built(root, spec):
        build_dataset(root, spec, verbose=False)
    folder = osp.join(root, 'images', 'training')
    names = sorted(n for n in os.listdir(folder)
                   if n.endswith('.png'))[:count]
    mean = np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(std, np.float32).reshape(1, 3, 1, 1)
    out = []
    for name in names:
        img = cv2.imread(osp.join(folder, name))  # BGR, as mmcv loads it
        if bgr_to_rgb:
            img = img[..., ::-1]
        x = img.transpose(2, 0, 1)[None].astype(np.float32)
        out.append(np.ascontiguousarray((x - mean) / std))
    return out


#: the engines of each FP model, in table order
ENGINES = ('ort-fp32', 'ort-int8', 'ov', 'ov-int8')
ENGINE_NAMES = {'ort-fp32': 'ONNX Runtime FP32',
                'ort-int8': 'ONNX Runtime INT8 (static QDQ, per-channel)',
                'ov': 'OpenVINO default precision',
                'ov-int8': 'OpenVINO INT8 (NNCF post-training)'}


def _prepare_binary(model: nn.Module, images: Sequence[np.ndarray]) -> None:
    """Running statistics of a model without a checkpoint: one
    training-mode pass (no gradient) over two calibration images."""
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(np.concatenate(images[:2])))
    model.eval()


def run_peer_bench(cfg, work_dir: str, checkpoint: Optional[str] = None,
                   models: Sequence[str] = ('counterpart', 'mmseg'),
                   engines: Sequence[str] = ENGINES,
                   threads_list: Sequence[int] = (1, 2),
                   calib: int = 8, warmup: int = 2, repeats: int = 7,
                   allow_unsafe: bool = False,
                   log: Callable[[str], None] = print) -> dict:
    """Time the packed binary model of ``cfg`` beside the FP models'
    peer engines, one image, at each thread count.

    Args:
        cfg: the binary model's config (a loaded ``Config``).
        work_dir: where the ONNX / INT8 files and the calibration images go.
        checkpoint: the binary model's checkpoint; without one the model
            keeps its initialisation (running statistics from one pass over
            calibration images), which times the same.
        models: the FP models: ``'counterpart'`` (the config with every
            preset ``fp``) and ``'mmseg'`` (mmseg's stock UPerNet of the
            same backbone); both randomly initialised (nothing is
            downloaded; the weights do not change the work).
        engines: of :data:`ENGINES`.
        threads_list: thread counts.
        calib: calibration images of the INT8 engines (real photographs).

    Returns:
        A dict: ``rows`` (name, model, engine, ms per thread count,
        agreement with its reference), ``packed`` (its agreement with the
        fake-quantized model, the binary-kernel share of its time), and the
        ratios of the goals (packed vs best INT8, 1 -> 2 thread scaling).
    """
    from ..deploy import convert_to_packed
    from ..models.utils import load_whole_checkpoint, read_checkpoint
    from .builder import build_segmentor, comparison_config, fp_counterpart
    from .stage_timer import StageTimer
    require_peers()
    os.makedirs(work_dir, exist_ok=True)
    h, w = cfg.get('crop_size', (512, 512))
    pre = cfg.model.data_preprocessor
    images = calibration_images(osp.join(work_dir, 'calibration'), h,
                                max(calib, 2), pre.mean, pre.std,
                                pre.get('bgr_to_rgb', False))
    x = images[0]

    binary = build_segmentor(cfg)
    if checkpoint:
        load_whole_checkpoint(binary, read_checkpoint(
            checkpoint, allow_unsafe=allow_unsafe))
        binary.eval()
    else:
        _prepare_binary(binary, images)
    packed = LabelMap(convert_to_packed(binary), fused=True).eval()
    fake = LabelMap(binary).eval()
    with torch.no_grad():
        same = [agreement(fake(torch.from_numpy(i)).numpy(),
                          packed(torch.from_numpy(i)).numpy())
                for i in images]
    log(f'packed vs fake-quantized: {min(same) * 100:.3f}% of pixels agree '
        f'(worst of {len(images)} images)')
    rows = [dict(name='packed 1-bit (this config)', model='binary',
                 engine='packed', agreement=min(same),
                 run=lambda t: torch_engine('packed', packed, t))]

    fp_cfgs = {}
    if 'counterpart' in models:
        fp_cfgs['counterpart'] = fp_counterpart(cfg)
    if 'mmseg' in models:
        fp_cfgs['mmseg'] = comparison_config(cfg, 'mmseg', dict(model=dict(
            pretrained=None, backbone=dict(init_cfg=None))))
    for key, fp_cfg in fp_cfgs.items():
        torch.manual_seed(0)
        fp = LabelMap(build_segmentor(fp_cfg)).eval()
        with torch.no_grad():
            want = fp(torch.from_numpy(x)).numpy()
        onnx_path = export_onnx(fp, torch.from_numpy(x),
                                osp.join(work_dir, f'{key}_fp32.onnx'))
        log(f'{key}: exported {onnx_path}')
        built = {}
        if 'ort-fp32' in engines:
            built['ort-fp32'] = lambda t, p=onnx_path: onnxruntime_engine(
                'ort-fp32', p, t)
        if 'ort-int8' in engines:
            int8 = quantize_onnxruntime(
                onnx_path, osp.join(work_dir, f'{key}_int8.onnx'),
                images[:calib])
            log(f'{key}: ONNX Runtime INT8 {int8}')
            built['ort-int8'] = lambda t, p=int8: onnxruntime_engine(
                'ort-int8', p, t)
        if 'ov' in engines or 'ov-int8' in engines:
            ov_model = openvino_model(onnx_path)
            if 'ov' in engines:
                built['ov'] = lambda t, m=ov_model: openvino_engine(
                    'ov', m, t)
            if 'ov-int8' in engines:
                q = quantize_openvino(ov_model, images[:calib])
                log(f'{key}: OpenVINO INT8 (NNCF)')
                built['ov-int8'] = lambda t, m=q: openvino_engine(
                    'ov-int8', m, t)
        for engine in ENGINES:
            if engine not in built:
                continue
            got = built[engine](threads_list[0]).run(x)
            rows.append(dict(name=f'{key} FP model, {ENGINE_NAMES[engine]}',
                             model=key, engine=engine,
                             agreement=agreement(got, want),
                             run=built[engine]))

    for row in rows:
        row['ms'] = {}
        for t in threads_list:
            row['ms'][t] = time_engine(row['run'](t), x, warmup,
                                       repeats)['median_ms']
        log(f"{row['name']}: " + ', '.join(
            f'{t} thread(s) {ms:.1f} ms' for t, ms in row['ms'].items()))
        del row['run']

    torch.set_num_threads(threads_list[0])
    with StageTimer(packed.segmentor) as timer, torch.no_grad():
        packed(torch.from_numpy(x))
    kernel_s = sum(r['kernels_s'] for r in timer.report())
    result = dict(rows=rows, threads=list(threads_list),
                  shape=[int(h), int(w)],
                  packed_kernel_share=kernel_s / timer.elapsed)
    int8 = [r for r in rows if r['engine'].endswith('int8')]
    if int8:
        result['packed_vs_best_int8'] = {
            t: min(r['ms'][t] for r in int8) / rows[0]['ms'][t]
            for t in threads_list}
    if len(threads_list) > 1:
        t0, t1 = threads_list[0], threads_list[-1]
        result['packed_scaling'] = rows[0]['ms'][t0] / rows[0]['ms'][t1]
    return result


def format_peer_table(result: dict) -> str:
    """The table of :func:`run_peer_bench` (ms per image, agreement)."""
    threads = result['threads']
    head = f"{'engine':<72}" + ''.join(f'{f"{t} thread(s)":>14}'
                                       for t in threads) + f"{'agree':>9}"
    lines = [head]
    for r in result['rows']:
        lines.append(f"{r['name']:<72}" + ''.join(
            f"{r['ms'][t]:>11.1f} ms" for t in threads)
            + f"{r['agreement'] * 100:>8.2f}%")
    if 'packed_vs_best_int8' in result:
        lines.append('packed vs the fastest INT8 engine: ' + ', '.join(
            f'{v:.2f}x at {t} thread(s)'
            for t, v in result['packed_vs_best_int8'].items()))
    if 'packed_scaling' in result:
        lines.append(f"packed from {threads[0]} to {threads[-1]} threads: "
                     f"{result['packed_scaling']:.2f}x")
    lines.append('binary kernels: '
                 f"{result['packed_kernel_share'] * 100:.0f}% of the packed "
                 f'time ({threads[0]} thread(s))')
    lines.append('agree: pixels equal to the reference: the packed model '
                 'against the fake-quantized model, each FP engine against '
                 'its PyTorch FP model')
    return '\n'.join(lines)
