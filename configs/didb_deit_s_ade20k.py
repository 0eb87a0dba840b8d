# DIDB-ViT (arXiv 2507.02222) DeiT-S backbone (patch 16, features of blocks
# 4/6/8/12) + binary multi-level neck + fully binary UPerNet, ADE20K 150
# classes, 512x512 crops, 160k iterations, 8 GPUs x 2 images.
_base_ = [
    './_base_/models/upernet_didb_vit.py',
    './_base_/ade20k_160k.py',
]
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
# ImageNet-pretrained DeiT-S backbone weights, made as for
# didb_swin_t_ade20k.py (the official FP release converted once, or a binary
# ImageNet pretraining with tools/pretrain_cls.py; docs/ade20k.md):
#   python tools/convert_pretrained.py deit_small_patch16_224-cd65a155.pth \
#       pretrained/deit_small_patch16_224_didb.pth
# A missing file stops training with instructions. From scratch:
#   --cfg-options model.backbone.init_cfg=None
checkpoint_file = 'pretrained/deit_small_patch16_224_didb.pth'
model = dict(
    data_preprocessor=data_preprocessor,
    # the ViT's position-embedding grid follows the crop
    backbone=dict(
        img_size=crop_size,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)))
