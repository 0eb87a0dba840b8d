# Binary ImageNet-1k pretraining of the fully binary DIDB Swin-T backbone
# through mmpretrain (its ImageNet data pipeline, runtime and train tool):
#
#   python tools/train.py configs/pretrain/didb_swin_t_in1k.py
#
# (tools/train.py runs mmpretrain's own tools/train.py for a config whose
# default_scope is mmpretrain.) Recipe of BinaryViT-Le: AdamW, lr 5e-4 at
# batch 512 (8 GPUs x 64), no weight decay (and none on binary scales or
# shifts if it is raised: binary_paramwise_cfg), cosine decay without warmup,
# 300 epochs, no augmentation beyond random resized crops and flips, loss =
# soft cross-entropy to the softmax of a frozen FP DeiT-S teacher.
#
# The teacher's weights are a local file (nothing is downloaded): mmpretrain's
# DeiT-S ImageNet checkpoint (deit-small_pt-4xb256_in1k) saved as
# pretrained/deit-small_in1k.pth, or any FP classifier trained first. The
# segmentation configs then start from this run's checkpoint:
#   model.backbone.init_cfg=dict(type='Pretrained',
#       checkpoint='work_dirs/didb_swin_t_in1k/epoch_300.pth',
#       prefix='backbone.')
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64.py',
    'mmpretrain::_base_/default_runtime.py',
    '../_base_/schedules/binary_paramwise.py',
]
custom_imports = dict(
    imports=['mmseg_didb.integrations.mmpretrain'],
    allow_failed_imports=False)

preset = 'didb'
model = dict(
    type='BinaryImageClassifier',
    backbone=dict(
        type='mmseg.DIDBSwin',
        preset=preset,
        arch='tiny',  # Swin-T: width 96, depths (2, 2, 6, 2), window 7
        pretrain_img_size=224,
        drop_path_rate=0.1,
        # every stage's output norm, as in the segmentation backbone, so the
        # checkpoint loads into it with every key matched (the head pools
        # the last stage)
        out_indices=(0, 1, 2, 3)),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=1000,
        in_channels=768,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
        topk=(1, 5)),
    distill=dict(
        teacher='mmpretrain::deit/deit-small_4xb256_in1k.py',
        checkpoint='pretrained/deit-small_in1k.pth',
        temperature=1.0,
        alpha=1.0))

optim_wrapper = dict(
    type='OptimWrapper',
    # keeps the optimizer step eager, so that compile=True works
    constructor='CompilableOptimWrapperConstructor',
    optimizer=dict(
        type='AdamW', lr=5e-4, betas=(0.9, 0.999), weight_decay=0.0),
    paramwise_cfg={{_base_.binary_paramwise_cfg}})
max_epochs = 300
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
train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)
val_cfg = dict()
test_cfg = dict()
# lr 5e-4 is for batch 512: `--auto-scale-lr` rescales it to the real batch
auto_scale_lr = dict(base_batch_size=512)
