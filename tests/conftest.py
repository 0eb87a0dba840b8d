"""Shared fixtures: a tiny texture-mosaic dataset, a tiny config, a 2-iteration
training run through ``tools/train.py`` and a helper that runs the tools in a
subprocess with this interpreter."""
import contextlib
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Iterator, List

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # also works without `pip install -e .`
    sys.path.insert(0, str(REPO_ROOT))

# A tiny FP model from mmseg itself, so the tool tests do not depend on the
# plugin's own models: Swin (2 stages) + FCN head on 64x64 crops.
TINY_CONFIG = """\
_base_ = [
    {dataset_base!r},
    'mmseg::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmseg_didb'], allow_failed_imports=False)
data_root = {data_root!r}
crop_size = (64, 64)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=2,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(data_root=data_root,
                                   pipeline=test_pipeline))
test_dataloader = val_dataloader
model = dict(
    type='EncoderDecoder',
    data_preprocessor=dict(
        type='SegDataPreProcessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_val=0,
        seg_pad_val=255,
        size=crop_size),
    backbone=dict(
        type='SwinTransformer',
        pretrain_img_size=64,
        embed_dims=16,
        patch_size=4,
        window_size=4,
        mlp_ratio=2,
        depths=(1, 1),
        num_heads=(1, 2),
        strides=(4, 2),
        out_indices=(0, 1)),
    decode_head=dict(
        type='FCNHead',
        in_channels=32,
        in_index=1,
        channels=16,
        num_convs=1,
        concat_input=False,
        num_classes=8,
        norm_cfg=dict(type='BN', requires_grad=True),
        align_corners=False,
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
optim_wrapper = dict(
    type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-3))
param_scheduler = [
    dict(type='PolyLR', power=1.0, by_epoch=False, begin=0, end=4)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=2, val_interval=100)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=1, log_metric_by_epoch=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=1),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='SegVisualizationHook'))
randomness = dict(seed=0)
"""


# A tiny fully binary model on the demo config: DIDBSwin + BinaryUPerHead
# with preset {preset!r} on 64x64 texture mosaics.
TINY_BINARY_CONFIG = """\
_base_ = [{demo!r}]
data_root = {data_root!r}
crop_size = (64, 64)
model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(preset={preset!r}, embed_dims=32, depths=(1, 1),
                  num_heads=(1, 2), window_size=4, pretrain_img_size=64,
                  drop_path_rate=0.0, out_indices=(0, 1)),
    decode_head=dict(preset={preset!r}, in_channels=[32, 64],
                     in_index=[0, 1], pool_scales=(1, 2), channels=16,
                     dropout_ratio=0.0, num_classes={num_classes},
                     norm_cfg=dict(type={norm!r}, requires_grad=True)))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')
]
train_dataloader = dict(batch_size=2, dataset=dict(data_root=data_root,
                                                   pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(data_root=data_root,
                                   pipeline=test_pipeline))
test_dataloader = val_dataloader
train_cfg = dict(max_iters={iters}, val_interval=1000)
default_hooks = dict(logger=dict(interval=1),
                     checkpoint=dict(interval={ckpt_interval},
                                     save_last=True))
"""


def mmseg_converter(script: str) -> Callable:
    """The ``convert_*`` function of one of mmseg's own checkpoint converter
    scripts, as shipped in its wheel (``.mim/tools/model_converters/``),
    e.g. ``mmseg_converter('swin2mmseg')``."""
    import importlib.util

    import mmseg
    path = os.path.join(os.path.dirname(mmseg.__file__), '.mim', 'tools',
                        'model_converters', f'{script}.py')
    spec = importlib.util.spec_from_file_location(script, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, 'convert_' + script.split('2')[0])


def write_binary_config(path: Path, data_root: Path, preset: str = 'didb',
                        norm: str = 'BN', iters: int = 3,
                        ckpt_interval: int = 3, num_classes: int = 8,
                        extra: str = '') -> Path:
    """Writes a tiny binary demo config (see ``TINY_BINARY_CONFIG``) plus
    ``extra`` config lines (top-level keys other than ``model``) to
    ``path``."""
    path.write_text(TINY_BINARY_CONFIG.format(
        demo=str(REPO_ROOT / 'configs' / 'demo_texture.py'),
        data_root=str(data_root), preset=preset, norm=norm, iters=iters,
        ckpt_interval=ckpt_interval, num_classes=num_classes) + extra)
    return path


def tiny_segmentor(preset='didb', head: str = 'uper', embed_dims: int = 32,
                   backbone: str = 'swin', **kwargs) -> dict:
    """Model dict of a tiny binary segmentor at 32x32 (random init): a
    two-stage DIDBSwin (or a two-layer DIDBViT with the binary neck) and a
    binary UPerHead (``head='uper'``) or one-conv FCN head (``'fcn'``);
    ``kwargs`` go to the segmentor."""
    if backbone == 'swin':
        channels = [embed_dims, 2 * embed_dims]
        model = dict(backbone=dict(
            type='DIDBSwin', preset=preset, embed_dims=embed_dims,
            depths=(1, 1), num_heads=(1, 2), window_size=4,
            out_indices=(0, 1), pretrain_img_size=32, drop_path_rate=0.))
    elif backbone == 'vit':
        channels = [embed_dims, embed_dims]
        model = dict(
            backbone=dict(
                type='DIDBViT', preset=preset,
                arch=dict(embed_dims=embed_dims, num_layers=2, num_heads=2),
                img_size=32, patch_size=8, out_indices=(0, 1),
                drop_path_rate=0.),
            neck=dict(type='BinaryMultiLevelNeck', preset=preset,
                      in_channels=channels, out_channels=embed_dims,
                      scales=[2, 1]))
    else:
        raise ValueError(f'backbone must be swin or vit, got {backbone!r}')
    if head == 'uper':
        model['decode_head'] = dict(
            type='BinaryUPerHead', preset=preset, in_channels=channels,
            in_index=[0, 1], pool_scales=(1, 2), channels=16,
            num_classes=4, loss_decode=dict(type='CrossEntropyLoss'))
    else:
        model['decode_head'] = dict(
            type='BinaryFCNHead', preset=preset, in_channels=channels[1],
            in_index=1, channels=16, num_convs=1, concat_input=False,
            num_classes=4, loss_decode=dict(type='CrossEntropyLoss'))
    return dict(
        type='BinaryEncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor', size=(32, 32)),
        **model, **kwargs)


@contextlib.contextmanager
def log_records() -> Iterator[List[logging.LogRecord]]:
    """The records logged to mmengine's current logger inside the context
    (a handler of its own: the logger's stream handler may hold a stdout
    bound before the test, which capture would not see)."""
    from mmengine.logging import MMLogger
    records: List[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


@pytest.fixture(scope='session')
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope='session')
def texture_data(tmp_path_factory) -> Path:
    """A small texture-mosaic build: 8 training and 4 validation 64x64
    images, seed 0."""
    from mmseg_didb.datasets.texture_maker import MosaicSpec, build_dataset

    root = tmp_path_factory.mktemp('texture_mosaic')
    build_dataset(
        str(root),
        MosaicSpec(seed=0, size=64, num_train=8, num_val=4),
        verbose=False)
    return root


@pytest.fixture(scope='session')
def tiny_config(tmp_path_factory, texture_data) -> Path:
    """A config file for a tiny mmseg model on ``texture_data``."""
    path = tmp_path_factory.mktemp('configs') / 'tiny_texture.py'
    path.write_text(
        TINY_CONFIG.format(
            dataset_base=str(REPO_ROOT / 'configs' / '_base_' / 'datasets' /
                             'texture_mosaic.py'),
            data_root=str(texture_data)))
    return path


def _run_tool(args: List[str], timeout: float = 600,
              check: bool = True) -> subprocess.CompletedProcess:
    """Runs ``python <args>`` from the repository root with this
    interpreter; stdout and stderr are merged into ``.stdout``."""
    env = dict(os.environ)
    env.setdefault('OMP_NUM_THREADS', '1')
    proc = subprocess.run([sys.executable, *map(str, args)],
                          cwd=str(REPO_ROOT),
                          env=env,
                          stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT,
                          text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f'{" ".join(map(str, args))} failed with '
                             f'{proc.returncode}:\n{proc.stdout[-6000:]}')
    return proc


@pytest.fixture(scope='session')
def run_tool() -> Callable[..., subprocess.CompletedProcess]:
    return _run_tool


@pytest.fixture(scope='session')
def tiny_run(tmp_path_factory, tiny_config):
    """A 2-iteration training run through ``tools/train.py``.

    Returns:
        tuple: ``(work_dir, train output)``; the work dir holds the
        Runner checkpoints ``iter_1.pth`` and ``iter_2.pth``.
    """
    work_dir = tmp_path_factory.mktemp('tiny_run')
    proc = _run_tool(
        ['tools/train.py', tiny_config, '--work-dir', work_dir])
    return work_dir, proc.stdout
