# DIDBViT (DeiT layout, patch 16) + binary multi-level neck + binary UPerNet:
# mmseg's upernet_vit-b16_ln_mln.py with binary units; the patch-embedding
# stem, the norms and the final 1x1 classifiers (conv_seg) stay FP. The
# segmentor and both binary heads are those of upernet_didb_swin.py, fed by
# the neck's four 384-channel maps.
_base_ = ['./upernet_didb_swin.py']
model = dict(
    backbone=dict(
        _delete_=True,
        type='DIDBViT',
        arch='deit-small',
        preset='didb',
        img_size=(512, 512),
        patch_size=16,
        out_indices=(3, 5, 7, 11),
        with_cls_token=True,
        final_norm=False,
        interpolate_mode='bicubic',
        drop_path_rate=0.1),
    neck=dict(
        type='BinaryMultiLevelNeck',
        preset='didb',
        in_channels=[384, 384, 384, 384],
        out_channels=384,
        scales=[4, 2, 1, 0.5],
        # the heads' norm (SyncBN across GPUs), as every binary conv unit
        norm_cfg=dict(type='SyncBN', requires_grad=True)),
    decode_head=dict(in_channels=[384, 384, 384, 384]),
    # the last neck level (Swin: stage 3, also 384 channels)
    auxiliary_head=dict(in_index=3))
