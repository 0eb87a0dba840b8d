# Tiny classification pretraining through mmpretrain on CPU, the first step
# of the demo's pretrain -> fine-tune path (README, "mmpretrain and mmdet"):
#
#   python tools/make_cls_folder.py data/texture_cls --size 64
#   python tools/train.py configs/pretrain/tiny_texture_cls.py
#   python tools/train.py configs/recipes/demo_texture_mmpretrain_finetune.py
#
# The demo's fully binary DIDBSwin (same widths, depths and reference grid,
# so its checkpoint loads into the demo segmentor strictly) as an 8-class
# classifier of texture crops, trained on the labels (set model.distill to
# distil from an FP classifier trained first, see didb_swin_t_in1k.py).
_base_ = ['./didb_swin_t_in1k.py']
data_root = 'data/texture_cls'
model = dict(
    backbone=dict(
        embed_dims=32,
        depths=(2, 2, 2, 2),
        num_heads=(1, 2, 4, 8),
        window_size=4,
        # the demo segmentor's reference grid (its Token RPReLU maps)
        pretrain_img_size=128,
        drop_path_rate=0.0),
    head=dict(num_classes=8, in_channels=256, topk=(1, )),
    distill=None)
data_preprocessor = dict(num_classes=8)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=64, crop_ratio_range=(0.5, 1.0)),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='PackInputs'),
]
dataset = dict(_delete_=True, type='CustomDataset', data_root=data_root)
train_dataloader = dict(
    batch_size=32,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(dataset, data_prefix='train', pipeline=train_pipeline))
val_dataloader = dict(
    train_dataloader,
    dataset=dict(dataset, data_prefix='val', pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='Accuracy', topk=(1, ))
test_evaluator = val_evaluator
max_epochs = 10
optim_wrapper = dict(optimizer=dict(lr=2e-3))
param_scheduler = [
    dict(
        type='CosineAnnealingLR',
        T_max=max_epochs,
        eta_min=0.0,
        by_epoch=True,
        begin=0,
        end=max_epochs,
        convert_to_iter_based=True)
]
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
default_hooks = dict(
    logger=dict(interval=4),
    checkpoint=dict(interval=max_epochs, max_keep_ckpts=1))
auto_scale_lr = dict(enable=False)
randomness = dict(seed=0)
