"""DIDBViT: a fully binary DeiT / ViT backbone for mmseg (DIDB-ViT).

The backbone follows mmseg's ``VisionTransformer`` (same arguments, same
multi-level ``(B, C, H/16, W/16)`` outputs, same position-embedding resize)
with the DIDB-ViT block of Gao et al., "High-Fidelity Differential-information
Driven Binary Vision Transformer", arXiv 2507.02222: every linear of the
attention and MLP is a binary unit, the attention is
:class:`~mmseg_didb.models.layers.DIDBAttention` (HFSC + binarized attention
probabilities + DIBA) on one global window over the patch grid, and the unit
activations are Token RPReLU whose per-token maps live on the pretraining
token grid and are resized with the position embedding. The patch-embedding
stem, the position embedding, the LayerNorms and the final norm stay FP.

With ``preset='fp'`` the network is exactly timm's / DeiT's
``VisionTransformer`` (a converted timm DeiT gives timm's tokens).
"""
from functools import partial
from typing import Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from mmcv.cnn import build_norm_layer
from mmengine.model import ModuleList
from mmengine.model.weight_init import trunc_normal_
from mmseg.registry import MODELS
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.utils import _pair as to_2tuple

from mmseg_didb.binary.presets import BinaryPreset
from mmseg_didb.binary.rprelu import TokenGrid, resize_token_map
from ..layers.transformer_block import DIDBBlock
from ..utils.vit_convert import convert_vit_state_dict
from .base import DIDBBackbone

Tensor = torch.Tensor

CHECKPOINT_HINT = (
    'Use an ImageNet-pretrained DeiT / ViT of the same arch (timm '
    "'deit_small_patch16_224' saved with torch.save(model.state_dict(), ...), "
    "an official DeiT release ({'model': ...}), an mmseg-converted ViT, or a "
    'DIDBViT checkpoint), optionally normalised with '
    '`python tools/convert_pretrained.py SRC DST`, and set its local path in '
    "the config: model.backbone.init_cfg=dict(type='Pretrained', "
    'checkpoint=PATH) (prefix=\'backbone.\' for a segmentor checkpoint).')


def _build_norm(norm_cfg: dict, num_features: int) -> nn.Module:
    return build_norm_layer(norm_cfg, num_features)[1]


@MODELS.register_module()
class DIDBViT(DIDBBackbone):
    """Binary DeiT / ViT backbone (DIDB-ViT) with mmseg ViT's interface.

    Args:
        arch: ``'deit-tiny'``, ``'deit-small'`` or ``'deit-base'`` (or a dict
            with ``embed_dims``, ``num_layers``, ``num_heads``,
            ``mlp_ratio``); explicit ``embed_dims`` ... override it.
        preset: Binarization preset name (``fp``, ``bnn``, ``react``, ``bit``,
            ``binaryvit``, ``didb``), a :class:`BinaryPreset` or a dict; the
            table is :data:`mmseg_didb.binary.presets.PRESETS`.
        preset_overrides: Switch overrides, e.g. ``dict(hfsc=False)``.
        img_size: Pretraining input size; sets the position embedding grid
            and the reference grid of the Token RPReLU maps.
        patch_size: Patch size of the FP stem.
        patch_pad: Padding of the stem for sizes that are not a multiple of
            the patch: ``'corner'`` pads zeros at the bottom/right (mmseg).
        in_channels: Image channels.
        embed_dims: Token width (default from ``arch``).
        num_layers: Depth (default from ``arch``).
        num_heads: Heads (default from ``arch``).
        mlp_ratio: MLP ratio (default from ``arch``).
        out_indices: Layers whose output is returned (``-1``: the last); for
            UPerHead with a ``MultiLevelNeck`` use ``(3, 5, 7, 11)``.
        qkv_bias: Bias in the q/k/v units.
        drop_rate: Dropout after position embedding and projections.
        attn_drop_rate: Attention-probability dropout.
        drop_path_rate: Stochastic depth, increasing linearly to this value.
        with_cls_token: Keep the CLS token in the encoder.
        output_cls_token: Return ``[map, cls]`` per output (needs the token).
        norm_cfg: Config of the FP norms (timm/DeiT: LN, eps 1e-6).
        act_cfg: Accepted for mmseg configs; only GELU (the FP MLP's).
        patch_norm: Accepted for mmseg configs; only False.
        patch_bias: Bias of the stem conv (DeiT/timm have one: kept; note
            mmseg's ViT defaults to False and drops it).
        pre_norm: Accepted for mmseg configs; only False.
        num_fcs: Accepted for mmseg configs; only 2.
        final_norm: Apply the final norm to the last layer's tokens (timm's
            ``norm``).
        interpolate_mode: Mode for resizing the position embedding.
        norm_eval: Keep BatchNorm layers (``norm='bn'`` units) in eval mode.
        with_cp: Gradient checkpointing per layer.
        attn_cfg: Extra arguments of every attention (start values of the
            DIDB scalars: ``prob_scale_init``, ``diba_scale_init``,
            ``diba_local_init``; see ``DIDBAttention``).
        pretrained: Deprecated path, use ``init_cfg``.
        init_cfg: ``dict(type='Pretrained', checkpoint=PATH, prefix=None)``
            loads a timm / DeiT / mmseg-ViT / own checkpoint strictly (see
            :meth:`init_weights`).
        **overrides: Preset fields given directly (same as
            ``preset_overrides``).
    """

    arch_zoo: Dict[str, dict] = {
        'deit-tiny': dict(embed_dims=192, num_layers=12, num_heads=3,
                          mlp_ratio=4),
        'deit-small': dict(embed_dims=384, num_layers=12, num_heads=6,
                           mlp_ratio=4),
        'deit-base': dict(embed_dims=768, num_layers=12, num_heads=12,
                          mlp_ratio=4),
    }

    arch_keys = ('embed_dims', 'num_layers', 'num_heads')
    arch_defaults = dict(mlp_ratio=4)
    checkpoint_hint = CHECKPOINT_HINT
    # binary-only parameters a FP checkpoint lacks keep timm's init
    init_before_load = True

    def __init__(self,
                 arch: Union[str, dict] = 'deit-small',
                 preset: Union[str, BinaryPreset, dict] = 'didb',
                 preset_overrides: Optional[dict] = None,
                 img_size: Union[int, Sequence[int]] = 224,
                 patch_size: int = 16,
                 patch_pad: str = 'corner',
                 in_channels: int = 3,
                 embed_dims: Optional[int] = None,
                 num_layers: Optional[int] = None,
                 num_heads: Optional[int] = None,
                 mlp_ratio: Optional[float] = None,
                 out_indices: Union[int, Sequence[int]] = -1,
                 qkv_bias: bool = True,
                 drop_rate: float = 0.,
                 attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0.,
                 with_cls_token: bool = True,
                 output_cls_token: bool = False,
                 norm_cfg: Optional[dict] = None,
                 act_cfg: Optional[dict] = None,
                 patch_norm: bool = False,
                 patch_bias: bool = True,
                 pre_norm: bool = False,
                 num_fcs: int = 2,
                 final_norm: bool = False,
                 interpolate_mode: str = 'bicubic',
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 attn_cfg: Optional[dict] = None,
                 pretrained: Optional[str] = None,
                 init_cfg: Optional[dict] = None,
                 **overrides) -> None:
        super().__init__(init_cfg, pretrained)
        self._check_mmseg_compat({
            f'act_cfg={act_cfg} (the FP MLP uses GELU)':
            act_cfg is not None and act_cfg.get('type') != 'GELU',
            'patch_norm=True': patch_norm,
            f"patch_pad={patch_pad!r} (the stem pads the bottom/right: "
            "'corner')": patch_pad != 'corner',
            'pre_norm=True': pre_norm,
            f'num_fcs={num_fcs} (the MLP has fc1 and fc2)': num_fcs != 2,
        })
        spec = self._resolve_arch(arch, embed_dims=embed_dims,
                                  num_layers=num_layers, num_heads=num_heads,
                                  mlp_ratio=mlp_ratio)
        embed_dims, num_layers = spec['embed_dims'], spec['num_layers']
        num_heads, mlp_ratio = spec['num_heads'], spec['mlp_ratio']
        if embed_dims % num_heads:
            raise ValueError(f'embed_dims ({embed_dims}) must be divisible by '
                             f'num_heads ({num_heads}).')
        if output_cls_token and not with_cls_token:
            raise ValueError(
                'output_cls_token=True needs with_cls_token=True.')

        self.preset = self._resolve_preset(preset, preset_overrides,
                                           overrides)
        self.img_size = to_2tuple(img_size) if isinstance(img_size, int) \
            else tuple(img_size)
        if len(self.img_size) != 2:
            raise ValueError(f'img_size must be an int or (H, W), got '
                             f'{img_size}.')
        self.patch_size = patch_size
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.num_layers = num_layers
        self.interpolate_mode = interpolate_mode
        self.with_cls_token = with_cls_token
        self.output_cls_token = output_cls_token
        self.norm_eval = norm_eval
        # Token RPReLU maps carry the CLS row only when the encoder sees CLS.
        self.grid = TokenGrid((self.img_size[0] // patch_size,
                               self.img_size[1] // patch_size),
                              1 if with_cls_token else 0)
        self.out_indices = self._resolve_out_indices(out_indices, num_layers)
        norm_cfg = norm_cfg or dict(type='LN', eps=1e-6)

        self._build_patch_embed(self.img_size, patch_size, in_channels,
                                embed_dims, norm=False, bias=patch_bias)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dims))
        # As in mmseg, the position embedding always holds the CLS row.
        self.pos_embed = nn.Parameter(
            torch.zeros(1, 1 + self.grid.size[0] * self.grid.size[1],
                        embed_dims))
        self.drop_after_pos = nn.Dropout(p=drop_rate)

        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, num_layers)]
        # One global window per layer: DIDBBlock without window arguments.
        self.layers = ModuleList([
            DIDBBlock(
                embed_dims,
                num_heads,
                mlp_ratio,
                self.preset,
                qkv_bias=qkv_bias,
                drop=drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=dpr[i],
                grid=self.grid,
                norm_layer=partial(_build_norm, norm_cfg),
                attn_kwargs=attn_cfg,
                with_cp=with_cp) for i in range(num_layers)
        ])
        self.final_norm = final_norm
        if final_norm:
            self.norm = build_norm_layer(norm_cfg, embed_dims)[1]
        self._register_load_state_dict_pre_hook(self._convert_checkpoint)

    # ---------------------------------------------------------------- forward
    def _pos_embed(self, x: Tensor, hw: Tuple[int, int]) -> Tensor:
        """Add the position embedding, resized when the grid differs."""
        pos = self.pos_embed
        if tuple(hw) != self.grid.size:
            pos = resize_token_map(pos, TokenGrid(self.grid.size, 1), hw,
                                   self.interpolate_mode)
        return self.drop_after_pos(x + pos)

    def _to_output(self, x: Tensor,
                   hw: Tuple[int, int]) -> Union[Tensor, list]:
        tokens = x[:, self.grid.num_extra:]
        b, _, c = tokens.shape
        out = tokens.reshape(b, hw[0], hw[1], c).permute(0, 3, 1, 2)
        out = out.contiguous()
        if self.output_cls_token:
            return [out, x[:, 0]]
        return out

    def forward(self, inputs: Tensor) -> tuple:
        """Args: inputs: (B, 3, H, W) images of any size (zero-padded at the
        bottom/right to a patch multiple by the stem).

        Returns:
            tuple: one ``(B, C, ceil(H/16), ceil(W/16))`` map per
            ``out_indices`` entry (``[map, cls]`` with ``output_cls_token``).
        """
        b = inputs.shape[0]
        x, hw = self._embed_patches(inputs)
        x = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1)
        x = self._pos_embed(x, hw)
        if not self.with_cls_token:
            x = x[:, 1:]
        outs = []
        for i, layer in enumerate(self.layers):
            x = layer(x, hw)
            if i == len(self.layers) - 1 and self.final_norm:
                x = self.norm(x)
            if i in self.out_indices:
                outs.append(self._to_output(x, hw))
        return tuple(outs)

    def train(self, mode: bool = True) -> 'DIDBViT':
        super().train(mode)
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self

    # ------------------------------------------------------------------- init
    def _init_tokens(self) -> None:
        """timm's ViT init of the position embedding and the CLS token."""
        trunc_normal_(self.pos_embed, std=.02)
        trunc_normal_(self.cls_token, std=.02)

    def _convert_state_dict(self, own: dict) -> dict:
        """Convert timm / DeiT / mmseg-ViT keys, resize the position
        embedding and the Token RPReLU maps (pre-hook of the mixin)."""
        converted, report = convert_vit_state_dict(
            own, self.state_dict(), self.grid, num_heads=self.num_heads, interpolate_mode=self.interpolate_mode)
        self._log_conversion(report)
        return converted
