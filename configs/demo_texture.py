# Demo: a small fully binary segmentor trained from scratch on the
# texture-mosaic dataset on CPU in a few minutes (`bash tools/demo.sh`):
# DIDBSwin (preset 'didb': binary weights and activations, binarized attention
# probabilities, HFSC + DIBA + Token RPReLU) and a BinaryUPerHead (every conv a
# binary unit; only the stem, norms and the final 1x1 classifier are FP).
#
# The model choice lives here only. For the FP reference set preset='fp' in
# both the backbone and the head (same topology as mmseg's Swin + UPerHead);
# for a binary backbone on mmseg's FP head, decode_head.type='UPerHead' and
# drop its `preset`.
_base_ = [
    './_base_/datasets/texture_mosaic.py',
    'mmseg::_base_/default_runtime.py',
    # AdamW without weight decay on binary scales/shifts, RPReLU, DIDB
    # scalars, norms and tables; its 160k schedule is replaced below.
    './_base_/schedules/binary_adamw_160k.py',
]
custom_imports = dict(imports=['mmseg_didb'], allow_failed_imports=False)

crop_size = (128, 128)
num_classes = 8
norm_cfg = dict(type='BN', requires_grad=True)
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255,
    size=crop_size)
model = dict(
    # EncoderDecoder plus the preset-driven GRS loss (binaryvit) and the
    # binarization switches; inference is EncoderDecoder's
    type='BinaryEncoderDecoder',
    data_preprocessor=data_preprocessor,
    backbone=dict(
        type='DIDBSwin',
        preset='didb',
        embed_dims=32,
        depths=(2, 2, 2, 2),
        num_heads=(1, 2, 4, 8),
        # 128 px -> 32, 16, 8, 4 tokens per side: window 4 tiles every stage
        # without padding.
        window_size=4,
        mlp_ratio=4,
        pretrain_img_size=128,
        drop_path_rate=0.1,
        out_indices=(0, 1, 2, 3)),
    decode_head=dict(
        type='BinaryUPerHead',
        preset='didb',
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

# Schedule: a few hundred iterations of the base's AdamW at a higher lr, with
# warm-up and poly decay.
max_iters = 400
optim_wrapper = dict(optimizer=dict(lr=2e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.05, by_epoch=False, begin=0, end=40),
    dict(
        type='PolyLR',
        power=1.0,
        eta_min=0.0,
        by_epoch=False,
        begin=40,
        end=max_iters)
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(
    logger=dict(interval=20),
    checkpoint=dict(interval=100, max_keep_ckpts=2, save_last=True))
randomness = dict(seed=0)
