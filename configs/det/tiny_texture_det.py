# Tiny RetinaNet on CPU: the demo's fully binary DIDBSwin and an FP FPN on
# the texture-mosaic images, every region of a class one box (COCO format):
#
#   python tools/make_texture_dataset.py data/texture_mosaic --coco
#   python tools/train.py configs/det/tiny_texture_det.py
#
# 40 iterations, then COCO box mAP on the validation split (NMS on CPU).
_base_ = ['./retinanet_didb_swin_t_fpn_1x_coco.py']
data_root = 'data/texture_mosaic/'
classes = ('brick', 'grass', 'gravel', 'moon', 'galaxies', 'tissue',
           'retina', 'fur')
size = 128
model = dict(
    data_preprocessor=dict(pad_size_divisor=32),
    backbone=dict(
        embed_dims=32,
        depths=(2, 2, 2, 2),
        num_heads=(1, 2, 4, 8),
        window_size=4,
        pretrain_img_size=size,
        drop_path_rate=0.0),
    neck=dict(in_channels=[64, 128, 256], out_channels=64),
    bbox_head=dict(
        num_classes=len(classes), in_channels=64, feat_channels=64,
        stacked_convs=2))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(size, size), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(size, size), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                    'scale_factor'))
]
dataset = dict(type='CocoDataset', data_root=data_root,
               metainfo=dict(classes=classes))
train_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    batch_sampler=None,
    dataset=dict(
        dataset,
        ann_file='annotations/instances_training.json',
        data_prefix=dict(img='images/training/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=4),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        dataset,
        ann_file='annotations/instances_validation.json',
        data_prefix=dict(img='images/validation/'),
        test_mode=True,
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(
    ann_file=data_root + 'annotations/instances_validation.json')
test_evaluator = val_evaluator
max_iters = 40
train_cfg = dict(
    _delete_=True, type='IterBasedTrainLoop', max_iters=max_iters,
    val_interval=max_iters)
optim_wrapper = dict(optimizer=dict(lr=1e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0,
         end=10),
    dict(type='CosineAnnealingLR', T_max=max_iters, eta_min=0.0,
         by_epoch=False, begin=0, end=max_iters)
]
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=1))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
