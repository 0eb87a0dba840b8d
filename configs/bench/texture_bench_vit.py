# The accuracy benchmark's ViT task (tools/analysis/accuracy_bench.py
# --task vit): the DeiT layout of configs/didb_deit_s_ade20k.py (global
# attention over every token, a CLS token, a binary multi-level neck and a
# binary UPerNet), scaled to a 2-core CPU: 64x64 inputs, patch 4 (16x16 =
# 256 tokens + CLS), 6 blocks of width 96 with 3 heads of 32 dims, features
# of blocks 2/3/4/6 rescaled to strides 4-32 as Swin's stages are. Data,
# protocol and schedule are those of texture_bench.py.
_base_ = ['./texture_bench.py']
preset = 'didb'
width = 96
model = dict(
    backbone=dict(
        _delete_=True,
        type='DIDBViT',
        preset=preset,
        img_size=(64, 64),
        patch_size=4,
        embed_dims=width,
        num_layers=6,
        num_heads=3,
        mlp_ratio=4,
        out_indices=(1, 2, 3, 5),
        with_cls_token=True,
        final_norm=False,
        interpolate_mode='bicubic',
        drop_path_rate=0.0),
    neck=dict(
        type='BinaryMultiLevelNeck',
        preset=preset,
        in_channels=[width] * 4,
        out_channels=width,
        # token map = input / 4: the four levels at strides 4, 8, 16, 32
        scales=[1, 0.5, 0.25, 0.125],
        norm_cfg={{_base_.norm_cfg}}),
    decode_head=dict(in_channels=[width] * 4))
