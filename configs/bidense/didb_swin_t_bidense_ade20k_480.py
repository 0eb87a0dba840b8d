# DIDBSwin-T binary UPerNet under the BiDense protocol (arXiv 2411.10346), for
# comparing with BiDense Table 1 (binary UPerNet rows, trained from scratch):
# train: long side 520 randomly scaled by [0.5, 2.0], 480x480 crop, flip;
# eval: short side 480 then a 480x480 centre crop, metrics on the crop;
# AdamW with OneCycle (max lr 1e-4), 50 epochs, batch 32 (8 GPUs x 4),
# cross-entropy only (no auxiliary head), no ImageNet initialisation.
_base_ = [
    '../_base_/models/upernet_didb_swin.py',
    '../_base_/ade20k_160k.py',
]
crop_size = (480, 480)
max_epochs = 50
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(init_cfg=None),
    auxiliary_head=None)

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(
        type='RandomResize',
        scale=(520, 520),
        ratio_range=(0.5, 2.0),
        keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='ResizeShortestEdge', scale=480, max_size=100000),
    dict(type='CenterCropEval', crop_size=crop_size),
    dict(type='PackSegInputs')
]
train_dataloader = dict(
    batch_size=4,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

param_scheduler = [
    dict(
        type='OneCycleLR',
        eta_max=1e-4,
        by_epoch=True,
        begin=0,
        end=max_epochs,
        convert_to_iter_based=True)
]
train_cfg = dict(
    _delete_=True,
    type='EpochBasedTrainLoop',
    max_epochs=max_epochs,
    val_interval=5)
default_hooks = dict(
    logger=dict(log_metric_by_epoch=True),
    checkpoint=dict(by_epoch=True, interval=5, max_keep_ckpts=3))
log_processor = dict(by_epoch=True)
