# DIDBSwin + binary UPerNet: mmseg's upernet_swin.py with every 3x3/1x1 conv of
# the heads a binary conv unit (BiDense-style FP channel bypass); the stem, the
# norms and the final 1x1 classifiers (conv_seg) stay FP.
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
        type='DIDBSwin',
        arch='tiny',
        preset='didb',
        pretrain_img_size=224,
        window_size=7,
        mlp_ratio=4,
        drop_path_rate=0.3,
        out_indices=(0, 1, 2, 3)),
    decode_head=dict(
        type='BinaryUPerHead',
        preset='didb',
        in_channels=[96, 192, 384, 768],
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
        in_index=2,
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
