"""Every config in configs/ builds (model + dataloaders on a tiny ADE20K-layout
folder); the two main ADE20K configs also run a 512x512 forward; the AdamW
setup keeps weight decay off every non-weight parameter; missing data and
missing pretrained weights fail with instructions."""
import mmseg_didb  # noqa: F401  (first: installs the mmcv-lite shims)
import copy
import functools
import logging
import time
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from mmseg.registry import MODELS

from ade_fixture import make_ade_folder

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / 'configs'
# configs/pretrain (mmpretrain) and configs/det (mmdet) are built and run
# in tests/test_integrations.py
OTHER_TOOLBOXES = ('pretrain', 'det')
CONFIGS = sorted(
    p for p in CONFIG_DIR.rglob('*.py') if '_base_' not in p.parts
    and p.relative_to(CONFIG_DIR).parts[0] not in OTHER_TOOLBOXES)
MAIN_CONFIGS = ['didb_swin_t_ade20k.py', 'didb_deit_s_ade20k.py']
ADE_TYPES = ('ADE20KDataset', 'ADE20KCheckedDataset')
LOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')


def rel(path: Path) -> str:
    return str(path.relative_to(CONFIG_DIR))


@pytest.fixture(scope='module')
def ade_root(tmp_path_factory):
    return str(make_ade_folder(tmp_path_factory.mktemp('ade')))


@pytest.fixture(autouse=True, scope='module')
def quiet_mmengine():
    # the optimizer constructor logs one line per parameter option
    init_default_scope('mmseg')
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(level)


@functools.lru_cache(maxsize=None)
def _parse(path: Path) -> Config:
    return Config.fromfile(str(path))


def load_config(path: Path, data_root: str) -> Config:
    """The config, pointed at the tiny data folder, loading in-process."""
    cfg = copy.deepcopy(_parse(path))
    if cfg.model.get('teacher_checkpoint'):
        # distillation configs load a trained teacher at build time; building
        # is what is tested here, so a random teacher stands in
        cfg.model.teacher_checkpoint = None
        cfg.model.allow_random_teacher = True
    for key in LOADERS:
        loader = cfg.get(key)
        if loader is None:
            continue
        loader.num_workers = 0
        loader.persistent_workers = False
        loader.dataset.data_root = data_root
        # serialising runs gc.collect(), slow with big models alive
        loader.dataset.serialize_data = False
        if loader.dataset.type == 'TextureMosaicDataset':
            loader.dataset.img_suffix = '.jpg'  # the ADE-layout fixture
    if 'bench' in path.parts:
        # the benchmark trains on its 64x64 build as stored (no crop); the
        # fixture's images are larger, so crop them here
        pipe = cfg.train_dataloader.dataset.pipeline
        pipe.insert(2, dict(type='RandomCrop', crop_size=cfg.crop_size))
    return cfg


_MAIN_MODELS = {}


def build_model(path: Path, cfg: Config) -> torch.nn.Module:
    """Builds the model; the two main ones are kept for the forward test."""
    if path.name in MAIN_CONFIGS and path.parent == CONFIG_DIR:
        if path.name not in _MAIN_MODELS:
            _MAIN_MODELS[path.name] = MODELS.build(cfg.model)
        return _MAIN_MODELS[path.name]
    return MODELS.build(cfg.model)


def crop_size(cfg: Config):
    return tuple(cfg.model.data_preprocessor['size'])


def is_binary(model: torch.nn.Module) -> bool:
    return any(hasattr(m, 'kind') and hasattr(m, 'enabled')
               for m in model.modules())


def check_weight_decay(model: torch.nn.Module, cfg: Config) -> None:
    """Only conv/linear weights (and biases) may decay: every binary scale,
    shift, (Token) RPReLU, DIBA/HFSC scalar, norm, embedding and table of
    the built model sits in a param group with weight_decay 0, while the
    latent weights keep the configured decay (if any, e.g. not in the
    decay-free stage 2 of two-stage training)."""
    base_decay = cfg.optim_wrapper.optimizer.get('weight_decay', 0)
    # a Runner built by another test may have made its logger current
    MMLogger.get_current_instance().setLevel(logging.WARNING)
    optim = build_optim_wrapper(model, copy.deepcopy(cfg.optim_wrapper))
    decay = {
        id(p): g['weight_decay']
        for g in optim.optimizer.param_groups for p in g['params']
    }
    wrong = []
    for mod_name, module in model.named_modules():
        layer = isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))
        for name, param in module.named_parameters(recurse=False):
            full = f'{mod_name}.{name}'
            if layer and name == 'weight':
                if decay[id(param)] != base_decay:
                    wrong.append(f'{full} (weight without decay)')
            elif not layer and decay[id(param)] != 0:
                wrong.append(f'{full} ({type(module).__name__}, decays)')
    assert not wrong, 'weight decay misassigned: ' + ', '.join(wrong[:10])


def build_loader(cfg: Config, key: str):
    return Runner.build_dataloader(copy.deepcopy(cfg[key]), seed=0)


@pytest.mark.parametrize('path', CONFIGS, ids=rel)
def test_config_builds_model_optimizer_and_dataloaders(path, ade_root):
    cfg = load_config(path, ade_root)
    assert 'mmseg_didb' in cfg.custom_imports['imports']
    assert cfg.default_scope == 'mmseg'
    model = build_model(path, cfg)
    ade = cfg.train_dataloader.dataset.type in ADE_TYPES
    if ade:
        assert cfg.train_dataloader.dataset.type == 'ADE20KCheckedDataset'
        assert cfg.test_dataloader.dataset.type == 'ADE20KCheckedDataset'
        heads = [model.decode_head]
        if model.with_auxiliary_head:
            heads.append(model.auxiliary_head)
        assert all(h.num_classes == 150 for h in heads)
        expected = (480, 480) if 'bidense' in path.parts else (512, 512)
        assert crop_size(cfg) == expected
    if is_binary(model):
        check_weight_decay(model, cfg)

    size = crop_size(cfg)
    for key in ('train_dataloader', 'val_dataloader'):
        loader = build_loader(cfg, key)
        batch = model.data_preprocessor(
            next(iter(loader)), training=key == 'train_dataloader')
        inputs, samples = batch['inputs'], batch['data_samples']
        assert inputs.dim() == 4 and inputs.shape[1] == 3
        if key == 'train_dataloader':
            assert tuple(inputs.shape[-2:]) == size
            assert tuple(samples[0].gt_sem_seg.shape) == size
        else:
            # evaluation labels match the frame predictions are resized to
            assert tuple(samples[0].gt_sem_seg.shape) == tuple(
                samples[0].ori_shape)
            if 'bidense' in path.parts:  # centre-crop evaluation
                assert tuple(samples[0].ori_shape) == size
                assert tuple(inputs.shape[-2:]) == size


@pytest.mark.parametrize('name', MAIN_CONFIGS)
def test_main_config_forward_512(name, ade_root):
    cfg = load_config(CONFIG_DIR / name, ade_root)
    model = build_model(CONFIG_DIR / name, cfg).eval()
    batch = model.data_preprocessor(
        next(iter(build_loader(cfg, 'train_dataloader'))), training=True)
    inputs = batch['inputs'][:1]
    assert inputs.shape == (1, 3, 512, 512)
    start = time.perf_counter()
    with torch.no_grad():
        logits = model(inputs, batch['data_samples'][:1], mode='tensor')
    assert logits.shape == (1, 150, 128, 128)  # UPerHead works at stride 4
    assert torch.isfinite(logits).all()
    print(f'{name}: 512x512 forward {time.perf_counter() - start:.1f} s')


def test_missing_ade20k_stops_training_with_instructions(tmp_path,
                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/ade here
    cfg = copy.deepcopy(_parse(CONFIG_DIR / 'didb_swin_t_ade20k.py'))
    cfg.work_dir = str(tmp_path / 'work')
    cfg.train_dataloader.num_workers = 0
    cfg.train_dataloader.persistent_workers = False
    runner = Runner.from_cfg(cfg)  # what tools/train.py does
    with pytest.raises(FileNotFoundError) as err:
        runner.train()
    msg = str(err.value)
    assert 'data/ade/ADEChallengeData2016' in msg
    assert 'ADEChallengeData2016.zip' in msg
    assert 'sceneparsing.csail.mit.edu' in msg
    assert 'images/training' in msg and 'unzip' in msg

    # an existing but empty folder is reported the same way
    empty = tmp_path / 'empty'
    for sub in ('images/training', 'annotations/training'):
        (empty / sub).mkdir(parents=True)
    loader = copy.deepcopy(cfg.train_dataloader)
    loader.dataset.data_root = str(empty)
    with pytest.raises(FileNotFoundError, match='No ".jpg" image found'):
        Runner.build_dataloader(loader, seed=0)


@pytest.mark.parametrize('name', MAIN_CONFIGS)
def test_missing_pretrained_backbone_says_how_to_make_it(
        name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no pretrained/ here
    cfg = _parse(CONFIG_DIR / name)
    init_cfg = cfg.model.backbone.init_cfg
    assert init_cfg.type == 'Pretrained'
    assert init_cfg.checkpoint.startswith('pretrained/')
    model = build_model(CONFIG_DIR / name, cfg)
    with pytest.raises(FileNotFoundError) as err:
        model.init_weights()  # what the runner calls before training
    assert init_cfg.checkpoint in str(err.value)
    assert 'convert_pretrained.py' in str(err.value)
