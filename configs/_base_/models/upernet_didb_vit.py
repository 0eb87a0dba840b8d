# DIDBViT (DeiT layout, patch 16) + binary multi-level neck + binary UPerNet:
# mmseg's upernet_vit-b16_ln_mln.py with binary units; the patch-embedding
# stem, the norms and the final 1x1 classifiers (conv_seg) stay FP.
norm_cfg = dict(type='SyncBN', requires_grad=True)
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255)
model = dict(
    type='BinaryEncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
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
        scales=[4, 2, 1, 0.5]),
    decode_head=dict(
        type='BinaryUPerHead',
        preset='didb',
        in_channels=[384, 384, 384, 384],
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=512,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=dict(
        type='BinaryFCNHead',
        preset='didb',
        in_channels=384,
        in_index=3,
        channels=256,
        num_convs=1,
        concat_input=False,
        dropout_ratio=0.1,
        num_classes=150,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)),
    # model training and testing settings
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
