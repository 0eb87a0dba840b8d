# DIDB-ViT (arXiv 2507.02222) Swin-T backbone, fully binary UPerNet, ADE20K
# 150 classes, 512x512 crops, 160k iterations (mmseg's Swin-T UPerNet protocol:
# 8 GPUs x 2 images).
_base_ = [
    './_base_/models/upernet_didb_swin.py',
    './_base_/ade20k_160k.py',
]
crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
# ImageNet-pretrained Swin-T backbone weights: e.g. the official FP release
# converted once (it then loads into every preset; binary-only parameters
# start from their FP counterparts):
#   python tools/convert_pretrained.py swin_tiny_patch4_window7_224.pth \
#       pretrained/swin_tiny_patch4_window7_224_didb.pth
# or a binary ImageNet pretraining (tools/pretrain_cls.py); docs/ade20k.md.
# A missing file stops training with instructions. From scratch:
#   --cfg-options model.backbone.init_cfg=None
checkpoint_file = 'pretrained/swin_tiny_patch4_window7_224_didb.pth'
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)))
