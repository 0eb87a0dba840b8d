"""Two-stage training (ReActNet): stage 1 FP weights, stage 2 fully binary."""
import copy
import os
import os.path as osp
import warnings
from types import SimpleNamespace

import mmseg_didb  # noqa: F401  (first: installs the mmcv-lite shims)
import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.logging import MMLogger
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from mmseg.registry import MODELS

from mmseg_didb.binary import (BinaryConv2d, BinaryLinear, RSign,
                               binarization_state)
from mmseg_didb.datasets.texture_maker import MosaicSpec, build_dataset
from mmseg_didb.engine import BinarizationSwitchHook

torch.set_num_threads(1)
init_default_scope('mmseg')

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
RECIPES = osp.join(ROOT, 'configs', 'recipes')


def shrink(model_cfg):
    """Tiny version of a demo recipe model (same types, presets, switches)."""
    model_cfg.backbone.update(
        embed_dims=16, depths=(1, 1), num_heads=(1, 2), out_indices=(0, 1),
        drop_path_rate=0.)
    model_cfg.decode_head.update(
        in_channels=[16, 32], in_index=[0, 1], pool_scales=(1, 2),
        channels=16, dropout_ratio=0.)
    return model_cfg


def recipe(name):
    return Config.fromfile(osp.join(RECIPES, name))


def binary_layers(model):
    return [m for m in model.modules()
            if isinstance(m, (BinaryLinear, BinaryConv2d))
            and m.weight_quantizer is not None]


def check_layers(model, x, weights_binary: bool) -> int:
    """Run ``model`` and check every binary layer against a hand computation.

    Each layer's output must be ``op(q_act(x), W_eff) + b`` with ``W_eff`` the
    latent FP weight (stage 1) or its binarized form (stage 2).
    """
    records = []

    def hook(module, inputs, output):
        records.append((module, inputs[0].detach(), output.detach()))

    handles = [m.register_forward_hook(hook) for m in binary_layers(model)]
    with torch.no_grad():
        model._forward(x)
    for h in handles:
        h.remove()
    assert records
    for layer, inp, out in records:
        q_in = layer.input_quantizer(inp)
        if isinstance(layer.input_quantizer, RSign):
            # activations are binary in both stages
            assert set(q_in.abs().unique().tolist()) == {1.0}
        w = layer.weight
        if weights_binary:
            w_eff = layer.weight_quantizer(w)
            rows = w_eff.detach().flatten(1).abs()
            # one magnitude per output row: a_r * sign(.)
            assert torch.allclose(rows, rows[:, :1].expand_as(rows))
            assert not torch.allclose(w_eff, w)
        else:
            w_eff = w
        if isinstance(layer, BinaryLinear):
            expected = F.linear(q_in, w_eff, layer.bias)
        else:
            expected = layer._conv_forward(q_in, w_eff, layer.bias)
        assert torch.allclose(out, expected, atol=1e-5), type(layer)
    return len(records)


def test_stage1_keeps_fp_weights_stage2_binarizes():
    cfg1 = recipe('demo_texture_stage1.py')
    cfg2 = recipe('demo_texture_stage2.py')
    assert cfg1.model.binarize == dict(weights=False)
    assert cfg2.model.binarize is None
    assert cfg2.load_from.endswith(
        f'demo_texture_stage1/iter_{cfg1.train_cfg.max_iters}.pth')
    stage1 = MODELS.build(shrink(cfg1.model))
    stage1.init_weights()
    stage2 = MODELS.build(shrink(cfg2.model))
    assert binarization_state(stage1) == dict(
        weights=False, activations=True, attention=True)
    assert binarization_state(stage2) == dict(
        weights=True, activations=True, attention=True)
    # identical parameters and keys: stage 2 loads stage 1 strictly
    stage2.load_state_dict(stage1.state_dict(), strict=True)
    stage1.eval()
    stage2.eval()
    x = torch.randn(1, 3, 32, 32)
    n1 = check_layers(stage1, x, weights_binary=False)
    n2 = check_layers(stage2, x, weights_binary=True)
    assert n1 == n2 == len(binary_layers(stage1))
    with torch.no_grad():
        assert not torch.allclose(stage1._forward(x), stage2._forward(x))


def test_switch_hook_single_run_variant():
    cfg = recipe('demo_texture_stage2.py')
    model = MODELS.build(shrink(cfg.model))
    logger = MMLogger.get_instance('test_two_stage_hook')
    runner = SimpleNamespace(model=model, iter=0, logger=logger)
    hook = BinarizationSwitchHook(weights_on_iter=3)
    hook.before_train(runner)
    assert binarization_state(model)['weights'] is False
    assert binarization_state(model)['activations'] is True
    for it in range(5):
        runner.iter = it
        hook.before_train_iter(runner, it)
        assert binarization_state(model)['weights'] is (it >= 3)
    # resuming past the switch restores stage 2 at once
    fresh = BinarizationSwitchHook(weights_on_iter=3)
    model2 = MODELS.build(shrink(cfg.model))
    fresh.before_train(SimpleNamespace(model=model2, iter=7, logger=logger))
    assert binarization_state(model2)['weights'] is True
    with pytest.raises(ValueError, match='at least one'):
        BinarizationSwitchHook()
    with pytest.raises(ValueError, match='non-negative'):
        BinarizationSwitchHook(weights_on_iter=-1)


@pytest.fixture(scope='module')
def mosaic(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('mosaic'))
    build_dataset(root, MosaicSpec(size=64, num_train=2, num_val=1),
                  verbose=False)
    return root


def runner_cfg(cfg, data_root, work_dir):
    """A recipe config shrunk to one iteration on a 64 px mosaic."""
    cfg = copy.deepcopy(cfg)
    shrink(cfg.model)
    cfg.model.data_preprocessor.size = (64, 64)
    for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        cfg[loader].dataset.data_root = data_root
    cfg.train_dataloader.batch_size = 2  # BN after the 1x1 PPM pool
    for step in cfg.train_dataloader.dataset.pipeline:
        if step.type == 'RandomResize':
            step.scale = (64, 64)
        if step.type == 'RandomCrop':
            step.crop_size = (64, 64)
    cfg.train_cfg.max_iters = 1
    cfg.train_cfg.val_interval = 100
    cfg.param_scheduler = [dict(type='ConstantLR', factor=1.0, by_epoch=False)]
    cfg.default_hooks.checkpoint.interval = 1
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.pop('visualization')
    cfg.work_dir = work_dir
    return cfg


def test_two_stage_kd_recipe_runs_with_load_from(mosaic, tmp_path):
    """The demo two-stage + KD recipe through mmengine's Runner (as
    tools/train.py runs it): stage 1 with FP weights and ``loss_kd``, stage 2
    fully binary from the stage-1 checkpoint."""
    teacher_cfg = shrink(recipe('demo_texture_fp_teacher.py').model)
    teacher = MODELS.build(teacher_cfg)
    teacher.init_weights()
    teacher_ckpt = str(tmp_path / 'teacher.pth')
    torch.save({'state_dict': teacher.state_dict()}, teacher_ckpt)

    cfg1 = runner_cfg(recipe('demo_texture_kd_stage1.py'), mosaic,
                      str(tmp_path / 'stage1'))
    assert cfg1.model.teacher_config.endswith('demo_texture_fp_teacher.py')
    cfg1.model.teacher_config = teacher_cfg
    cfg1.model.teacher_checkpoint = teacher_ckpt
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        runner1 = Runner.from_cfg(cfg1)
        runner1.train()
    assert binarization_state(runner1.model)['weights'] is False
    logs = runner1.message_hub.log_scalars
    assert 'train/loss_kd' in logs and 'train/decode.loss_ce' in logs
    ckpt1 = osp.join(cfg1.work_dir, 'iter_1.pth')
    saved = torch.load(ckpt1, map_location='cpu', weights_only=False)
    saved = saved['state_dict']
    assert set(saved) == set(runner1.model.state_dict())
    assert not any('teacher' in k for k in saved)

    cfg2 = runner_cfg(recipe('demo_texture_kd_stage2.py'), mosaic,
                      str(tmp_path / 'stage2'))
    cfg2.model.teacher_config = teacher_cfg
    cfg2.model.teacher_checkpoint = teacher_ckpt
    cfg2.load_from = ckpt1

    class Capture(Hook):
        """Records the model as training starts (after ``load_from``)."""

        def before_train(self, runner):
            self.state = {k: v.clone()
                          for k, v in runner.model.state_dict().items()}
            self.binarize = binarization_state(runner.model)

    capture = Capture()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        runner2 = Runner.from_cfg(cfg2)
        runner2.register_hook(capture)
        runner2.train()
    assert capture.binarize == dict(
        weights=True, activations=True, attention=True)
    assert set(capture.state) == set(saved)
    for k, v in capture.state.items():
        assert torch.equal(v, saved[k]), k
    assert 'train/loss_kd' in runner2.message_hub.log_scalars


def test_recipe_configs_pair_up():
    """Every recipe config parses; each stage 2 loads its stage 1's last
    checkpoint and switches every quantizer on."""
    pairs = {
        'demo_texture_stage2.py': 'demo_texture_stage1.py',
        'demo_texture_kd_stage2.py': 'demo_texture_kd_stage1.py',
        'didb_swin_t_ade20k_stage2.py': 'didb_swin_t_ade20k_stage1.py',
        'didb_swin_t_ade20k_kd_stage2.py': 'didb_swin_t_ade20k_kd_stage1.py',
    }
    names = sorted(f for f in os.listdir(RECIPES)
                   if f.endswith('.py'))
    cfgs = {name: recipe(name) for name in names}
    for name, cfg in cfgs.items():
        assert cfg.custom_imports.imports == ['mmseg_didb'], name
        assert cfg.default_scope == 'mmseg', name
    for stage2, stage1 in pairs.items():
        c1, c2 = cfgs[stage1], cfgs[stage2]
        assert c1.model.binarize == dict(weights=False)
        assert c2.model.binarize is None
        assert c2.model.type == c1.model.type
        assert c2.load_from == (f'work_dirs/{stage1[:-3]}/'
                                f'iter_{c1.train_cfg.max_iters}.pth')
        assert c2.optim_wrapper.optimizer.weight_decay == 0
    for name in ('demo_texture_kd_stage1.py',
                 'didb_swin_t_ade20k_kd_swin_t.py'):
        assert cfgs[name].model.type == 'DistillEncoderDecoder'
        assert cfgs[name].model.teacher_checkpoint
    hooks = cfgs['demo_texture_switch_hook.py'].custom_hooks
    assert hooks[0].type == 'BinarizationSwitchHook'
