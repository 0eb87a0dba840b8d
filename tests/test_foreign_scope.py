"""The plugin's modules built from another OpenMMLab codebase's scope.

mmpretrain / mmdet configs build their models in their own registries (scope
'mmpretrain' / 'mmdet', children of mmengine's root registry). After
``custom_imports=dict(imports=['mmseg_didb'])`` they reach the plugin with
``type='mmseg.DIDBSwin'`` (or ``_scope_='mmseg'``). Neither package is
installed here, so a registry with the same parent stands in for them.
"""
import mmseg_didb  # noqa: F401  (first: installs the mmcv-lite shims)
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import MODELS as ROOT_MODELS
from mmengine.registry import DefaultScope, Registry
from mmengine.utils import import_modules_from_strings

torch.set_num_threads(1)

# a downstream codebase's model registry, as mmpretrain / mmdet create theirs
FOREIGN_SCOPE = 'didb_foreign_codebase'
FOREIGN_MODELS = Registry('model', parent=ROOT_MODELS, scope=FOREIGN_SCOPE)

SMALL_SWIN = dict(
    arch='tiny',
    preset='didb',
    embed_dims=16,
    depths=(1, 1, 1, 1),
    num_heads=(1, 1, 2, 2),
    window_size=4,
    pretrain_img_size=64,
    drop_path_rate=0.)


def foreign_config(**backbone):
    """What a downstream config would contain."""
    return Config(
        dict(
            default_scope=FOREIGN_SCOPE,
            custom_imports=dict(
                imports=['mmseg_didb'], allow_failed_imports=False),
            model=dict(backbone=backbone)))


def check_swin(backbone):
    from mmseg_didb.models.backbones import DIDBSwin
    assert isinstance(backbone, DIDBSwin)
    backbone.eval()
    with torch.no_grad():
        outs = backbone(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [16, 32, 64, 128]
    assert [o.shape[-1] for o in outs] == [16, 8, 4, 2]


def test_scoped_type_from_foreign_registry():
    cfg = foreign_config(type='mmseg.DIDBSwin', **SMALL_SWIN)
    import_modules_from_strings(**cfg.custom_imports)
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        check_swin(FOREIGN_MODELS.build(cfg.model.backbone))
        # without the scope prefix the foreign registry does not know it
        with pytest.raises(KeyError, match='DIDBSwin'):
            FOREIGN_MODELS.build(dict(type='DIDBSwin', **SMALL_SWIN))


def test_scoped_type_from_root_registry_in_mmengine_scope():
    with DefaultScope.overwrite_default_scope('mmengine'):
        check_swin(
            ROOT_MODELS.build(dict(type='mmseg.DIDBSwin', **SMALL_SWIN)))


def test_underscore_scope_builds_nested_mmseg_types():
    """``_scope_='mmseg'`` switches scope for the whole nested build, so a
    binary head's mmseg loss (``type='CrossEntropyLoss'``) resolves too."""
    head = dict(
        _scope_='mmseg',
        type='BinaryUPerHead',
        preset='didb',
        in_channels=[16, 32, 64, 128],
        in_index=[0, 1, 2, 3],
        channels=16,
        num_classes=3,
        norm_cfg=dict(type='BN'),
        loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0))
    with DefaultScope.overwrite_default_scope(FOREIGN_SCOPE):
        backbone = FOREIGN_MODELS.build(
            dict(_scope_='mmseg', type='DIDBSwin', **SMALL_SWIN))
        head = FOREIGN_MODELS.build(head)
    from mmseg_didb.models.decode_heads import BinaryUPerHead
    assert isinstance(head, BinaryUPerHead)
    check_swin(backbone)
    with torch.no_grad():
        logits = head.eval()(backbone(torch.randn(1, 3, 64, 64)))
    assert logits.shape == (1, 3, 16, 16)
