# Demo recipe, two-stage training (ReActNet, Liu et al. ECCV 2020), stage 1:
# the binary DIDBSwin + binary UPerNet of the demo with binary activations
# (and attention probabilities) but full-precision weights. Same network,
# parameters and checkpoint keys as stage 2; only the weight quantizers are
# switched off (model.binarize).
#   python tools/train.py configs/recipes/demo_texture_stage1.py
#   python tools/train.py configs/recipes/demo_texture_stage2.py
_base_ = ['../demo_texture.py']
num_classes = 8
preset = 'didb'
norm_cfg = dict(type='BN', requires_grad=True)
model = dict(
    _delete_=True,
    type='BinaryEncoderDecoder',
    binarize=dict(weights=False),
    grs=None,
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
        preset=preset,
        embed_dims=32,
        depths=(2, 2, 2, 2),
        num_heads=(1, 2, 4, 8),
        window_size=4,
        mlp_ratio=4,
        pretrain_img_size=128,
        drop_path_rate=0.1,
        out_indices=(0, 1, 2, 3)),
    decode_head=dict(
        type='BinaryUPerHead',
        preset=preset,
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

# Half of the demo's budget per stage; ReActNet step 1 uses weight decay 1e-5.
max_iters = 200
optim_wrapper = dict(optimizer=dict(weight_decay=1e-5))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.05, by_epoch=False, begin=0, end=20),
    dict(
        type='PolyLR',
        power=1.0,
        eta_min=0.0,
        by_epoch=False,
        begin=20,
        end=max_iters)
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
