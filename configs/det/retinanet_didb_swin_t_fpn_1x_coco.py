# RetinaNet with the fully binary DIDB Swin-T backbone and mmdet's FP FPN on
# COCO, mmdet's 1x schedule (mmdet's configs/swin/retinanet_swin-t-p4-w7_fpn_
# 1x_coco.py with the backbone replaced):
#
#   python tools/train.py configs/det/retinanet_didb_swin_t_fpn_1x_coco.py
#
# (tools/train.py runs mmdet's own tools/train.py for a config whose
# default_scope is mmdet.) Start the backbone from a binary ImageNet
# pretraining (configs/pretrain/didb_swin_t_in1k.py):
#   model.backbone.init_cfg=dict(type='Pretrained', checkpoint=PATH,
#                                prefix='backbone.')
# With mmcv-lite, training and test-time NMS run on CPU; ops without a
# fallback (RoIAlign of two-stage detectors, deformable convs) raise an
# error naming the op (README, "mmpretrain and mmdet").
_base_ = [
    'mmdet::swin/retinanet_swin-t-p4-w7_fpn_1x_coco.py',
    '../_base_/schedules/binary_paramwise.py',
]
custom_imports = dict(
    imports=['mmseg_didb.integrations.mmdet'], allow_failed_imports=False)

preset = 'didb'
model = dict(
    backbone=dict(
        _delete_=True,
        type='mmseg.DIDBSwin',
        preset=preset,
        arch='tiny',  # Swin-T: width 96, depths (2, 2, 6, 2), window 7
        pretrain_img_size=224,
        drop_path_rate=0.2,
        # the stages FPN reads (each output has its own norm)
        out_indices=(1, 2, 3)),
    neck=dict(in_channels=[192, 384, 768]))
# AdamW, as the binary segmentation recipe (binary scales and shifts without
# weight decay)
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    # keeps the optimizer step eager, so that compile=True works
    constructor='CompilableOptimWrapperConstructor',
    optimizer=dict(
        type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg={{_base_.binary_paramwise_cfg}},
    clip_grad=dict(max_norm=1.0, norm_type=2))
