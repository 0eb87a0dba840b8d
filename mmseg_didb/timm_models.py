"""The plugin's binary backbones as timm classification models.

Importing this module (``import mmseg_didb`` does) registers, in timm's model
registry::

    didb_swin_tiny_patch4_window7_224   didb_deit_tiny_patch16_224
    didb_swin_small_patch4_window7_224  didb_deit_small_patch16_224
    didb_swin_base_patch4_window7_224   didb_deit_base_patch16_224

so ``timm.create_model('didb_swin_tiny_patch4_window7_224', num_classes=10,
preset='react')`` builds the mmseg backbone (``DIDBSwin`` / ``DIDBViT``) with
a classification head. Every preset of
:data:`mmseg_didb.binary.presets.PRESETS` is selectable with ``preset=`` (and ``preset_overrides=``); other keyword
arguments go to the backbone (``img_size`` is its pretraining size).

The backbone is the attribute ``backbone``, so a classification checkpoint
holds ``backbone.*`` keys (all of them: the backbone is built with the same
outputs and norms as in segmentation) next to the head's. It loads into the
segmentation backbone through ``init_cfg=dict(type='Pretrained',
checkpoint=..., prefix='backbone.')``, or its backbone-only export (see
``tools/pretrain_cls.py``) with ``prefix=None``. No pretrained weights are
published: ``pretrained=True`` is an error.
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
from mmseg.registry import MODELS
from timm.models import register_model

__all__ = ['DIDBClassifier']

# timm create_model passes these to every entrypoint
_TIMM_ONLY_KWARGS = ('pretrained_cfg', 'pretrained_cfg_overlay', 'cache_dir')


class DIDBClassifier(nn.Module):
    """timm-style image classifier over an mmseg DIDB backbone.

    ``forward_features`` returns the backbone's last output; ``forward_head``
    pools it (``'avg'``: mean over the map, ``'token'``: the CLS token),
    applies ``norm`` and the linear ``head``.

    Args:
        backbone (nn.Module): ``DIDBSwin`` or ``DIDBViT``; with
            ``global_pool='token'`` it must return ``[map, cls]``
            (``output_cls_token=True``).
        num_features (int): Channels of the backbone's last output.
        num_classes (int): Classes; 0 gives pooled features.
        global_pool (str): ``'avg'`` or ``'token'``.
        norm (nn.Module, optional): Norm before the head (identity if None).
        drop_rate (float): Dropout before the head.
    """

    def __init__(self,
                 backbone: nn.Module,
                 num_features: int,
                 num_classes: int = 1000,
                 global_pool: str = 'avg',
                 norm: Optional[nn.Module] = None,
                 drop_rate: float = 0.) -> None:
        super().__init__()
        if global_pool not in ('avg', 'token'):
            raise ValueError(f"global_pool must be 'avg' or 'token', got "
                             f'{global_pool!r}.')
        self.backbone = backbone
        self.num_features = self.head_hidden_size = num_features
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.norm = norm if norm is not None else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(num_features, num_classes) \
            if num_classes > 0 else nn.Identity()
        if isinstance(self.head, nn.Linear):
            nn.init.trunc_normal_(self.head.weight, std=.02)
            nn.init.zeros_(self.head.bias)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int,
                         global_pool: Optional[str] = None) -> None:
        if global_pool is not None:
            if global_pool != self.global_pool:
                raise ValueError('The pooling of a DIDB classifier is fixed '
                                 'at construction.')
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) \
            if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor):
        return self.backbone(x)[-1]

    def forward_head(self, x, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == 'token':
            x = x[1]  # [map, cls] from output_cls_token=True
        else:
            x = x[0] if isinstance(x, (list, tuple)) else x
            x = x.mean(dim=(2, 3))
        x = self.head_drop(self.norm(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _pop_common(pretrained: bool, kwargs: dict) -> Tuple[int, float]:
    if pretrained:
        raise ValueError(
            'No pretrained weights are published for the DIDB models: create '
            'them with pretrained=False and train with tools/pretrain_cls.py '
            '(or load a local checkpoint).')
    for key in _TIMM_ONLY_KWARGS:
        kwargs.pop(key, None)
    in_chans = kwargs.pop('in_chans', 3)
    if in_chans != 3:
        kwargs['in_channels'] = in_chans
    return kwargs.pop('num_classes', 1000), kwargs.pop('drop_rate', 0.)


def _didb_swin(arch: str, pretrained: bool, **kwargs) -> DIDBClassifier:
    """DIDBSwin + avg-pool head (timm Swin: norm3 on the last stage, pool)."""
    num_classes, drop_rate = _pop_common(pretrained, kwargs)
    if kwargs.pop('global_pool', 'avg') != 'avg':
        raise ValueError("DIDB Swin classifiers use global_pool='avg'.")
    kwargs.setdefault('pretrain_img_size', kwargs.pop('img_size', 224))
    # the segmentation layout (all four outputs and their norms) keeps the
    # checkpoint keys identical to the segmentation backbone's
    num_stages = len(kwargs.get('depths') or (0, 0, 0, 0))
    kwargs.setdefault('out_indices', tuple(range(num_stages)))
    backbone = MODELS.build(dict(type='DIDBSwin', arch=arch, **kwargs))
    backbone.init_weights()
    return DIDBClassifier(backbone, backbone.num_features[-1], num_classes,
                          'avg', drop_rate=drop_rate)


def _didb_deit(arch: str, pretrained: bool, **kwargs) -> DIDBClassifier:
    """DIDBViT + DeiT head: final LN on the CLS token (or mean), linear."""
    num_classes, drop_rate = _pop_common(pretrained, kwargs)
    global_pool = kwargs.pop('global_pool', 'token')
    if global_pool == 'token':
        kwargs.update(with_cls_token=True, output_cls_token=True)
    # the final norm lives in the classifier (timm's ``norm``): segmentation
    # configs use final_norm=False, so the backbone keys stay identical
    kwargs.setdefault('final_norm', False)
    kwargs.setdefault('out_indices', -1)
    backbone = MODELS.build(dict(type='DIDBViT', arch=arch, **kwargs))
    backbone.init_weights()
    norm = nn.LayerNorm(backbone.embed_dims, eps=1e-6)
    return DIDBClassifier(backbone, backbone.embed_dims, num_classes,
                          global_pool, norm, drop_rate)


@register_model
def didb_swin_tiny_patch4_window7_224(pretrained: bool = False,
                                      **kwargs) -> DIDBClassifier:
    """DIDBSwin-T classifier (Swin-T layout, window 7, 224 px)."""
    return _didb_swin('tiny', pretrained, **kwargs)


@register_model
def didb_swin_small_patch4_window7_224(pretrained: bool = False,
                                       **kwargs) -> DIDBClassifier:
    """DIDBSwin-S classifier (Swin-S layout, window 7, 224 px)."""
    return _didb_swin('small', pretrained, **kwargs)


@register_model
def didb_swin_base_patch4_window7_224(pretrained: bool = False,
                                      **kwargs) -> DIDBClassifier:
    """DIDBSwin-B classifier (Swin-B layout, window 7, 224 px)."""
    return _didb_swin('base', pretrained, **kwargs)


@register_model
def didb_deit_tiny_patch16_224(pretrained: bool = False,
                               **kwargs) -> DIDBClassifier:
    """DIDBViT DeiT-Tiny classifier (patch 16, 224 px)."""
    return _didb_deit('deit-tiny', pretrained, **kwargs)


@register_model
def didb_deit_small_patch16_224(pretrained: bool = False,
                                **kwargs) -> DIDBClassifier:
    """DIDBViT DeiT-Small classifier (patch 16, 224 px)."""
    return _didb_deit('deit-small', pretrained, **kwargs)


@register_model
def didb_deit_base_patch16_224(pretrained: bool = False,
                               **kwargs) -> DIDBClassifier:
    """DIDBViT DeiT-Base classifier (patch 16, 224 px)."""
    return _didb_deit('deit-base', pretrained, **kwargs)
