# Demo recipe, step 0: the full-precision teacher for distillation. The same
# small Swin-UPerNet topology as the binary student (DIDBSwin preset 'fp' is
# timm's / official Swin), trained from scratch on the texture-mosaic dataset.
#   python tools/train.py configs/recipes/demo_texture_fp_teacher.py
# -> work_dirs/demo_texture_fp_teacher/iter_400.pth (the teacher checkpoint of
# demo_texture_kd_stage1.py).
_base_ = ['../demo_texture.py']
num_classes = 8
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    _delete_=True,
    type='EncoderDecoder',
    data_preprocessor=dict(
        type='SegDataPreProcessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_val=0,
        seg_pad_val=255,
        size=(128, 128)),
    backbone=dict(
        type='DIDBSwin',
        preset='fp',
        embed_dims=32,
        depths=(2, 2, 2, 2),
        num_heads=(1, 2, 4, 8),
        # 128 px -> 32, 16, 8, 4 tokens per side: window 4 tiles every stage
        window_size=4,
        mlp_ratio=4,
        pretrain_img_size=128,
        drop_path_rate=0.1,
        out_indices=(0, 1, 2, 3)),
    decode_head=dict(
        type='UPerHead',
        in_channels=[32, 64, 128, 256],
        in_index=[0, 1, 2, 3],
        pool_scales=(1, 2, 3, 6),
        channels=64,
        dropout_ratio=0.1,
        num_classes=num_classes,
        norm_cfg=norm_cfg,
        align_corners=False,
        loss_decode=dict(
            type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    train_cfg=dict(),
    test_cfg=dict(mode='whole'))
