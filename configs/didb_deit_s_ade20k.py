# DIDB-ViT (arXiv 2507.02222) DeiT-S backbone (patch 16, features of blocks
# 4/6/8/12) + binary multi-level neck + fully binary UPerNet, ADE20K 150
# classes, 512x512 crops, 160k iterations, 8 GPUs x 2 images.
_base_ = [
    './_base_/models/upernet_didb_vit.py',
    './_base_/datasets/ade20k_checked.py',
    'mmseg::_base_/default_runtime.py',
    './_base_/schedules/binary_adamw_160k.py',
]
custom_imports = dict(imports=['mmseg_didb'], allow_failed_imports=False)
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
# ImageNet-pretrained DeiT-S backbone weights: e.g. the official FP release
# converted once (it then loads into every preset; binary-only parameters
# start from their FP counterparts):
#   python tools/convert_pretrained.py deit_small_patch16_224-cd65a155.pth \
#       pretrained/deit_small_patch16_224_didb.pth
# or a binary ImageNet pretraining (tools/pretrain_cls.py); docs/ade20k.md.
# A missing file stops training with instructions. From scratch:
#   --cfg-options model.backbone.init_cfg=None
checkpoint_file = 'pretrained/deit_small_patch16_224_didb.pth'
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        arch='deit-small',
        preset='didb',
        img_size=crop_size,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    neck=dict(preset='didb'),
    decode_head=dict(preset='didb', num_classes=150),
    auxiliary_head=dict(preset='didb', num_classes=150))

# By default, models are trained on 8 GPUs with 2 images per GPU
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
