# Demo recipe: classification pretraining -> segmentation fine-tuning. The
# binary DIDBSwin of the demo is first pretrained as a timm classifier on an
# ImageNet-format folder of texture crops (KD from an FP timm teacher), then
# fine-tuned here, fully binary, from the backbone export of that run:
#   python tools/make_cls_folder.py data/texture_cls --size 64
#   python tools/pretrain_cls.py data/texture_cls \
#       --model vit_tiny_patch16_224 --img-size 64 \
#       --model-kwargs '{"img_size": 64, "patch_size": 8}' \
#       --epochs 30 --work-dir work_dirs/cls_fp_teacher
#   python tools/pretrain_cls.py data/texture_cls \
#       --model didb_swin_tiny_patch4_window7_224 --preset didb --img-size 64 \
#       --model-kwargs '{"img_size": 128, "embed_dims": 32, "depths": [2, 2, 2, 2], "num_heads": [1, 2, 4, 8], "window_size": 4}' \
#       --teacher vit_tiny_patch16_224 \
#       --teacher-kwargs '{"img_size": 64, "patch_size": 8}' \
#       --teacher-checkpoint work_dirs/cls_fp_teacher/latest.pth \
#       --epochs 30 --work-dir work_dirs/cls_didb_swin_demo
#   python tools/train.py configs/recipes/demo_texture_cls_finetune.py
# The classifier's img_size must equal pretrain_img_size below (128): it fixes
# the reference grid of the Token RPReLU maps.
_base_ = ['./demo_texture_stage2.py']
load_from = None
model = dict(
    backbone=dict(
        init_cfg=dict(
            type='Pretrained',
            checkpoint='work_dirs/cls_didb_swin_demo/latest_backbone.pth')))
