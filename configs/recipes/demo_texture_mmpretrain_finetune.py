# Demo recipe: classification pretraining through mmpretrain -> segmentation
# fine-tuning. The demo's fully binary DIDBSwin is first pretrained as an
# 8-class classifier of texture crops with mmpretrain's train tool, then
# fine-tuned here from the backbone part of that checkpoint (loaded strictly:
# every key of the backbone matched):
#   python tools/make_cls_folder.py data/texture_cls --size 64
#   python tools/train.py configs/pretrain/tiny_texture_cls.py
#   python tools/train.py configs/recipes/demo_texture_mmpretrain_finetune.py
_base_ = ['../demo_texture.py']
model = dict(
    backbone=dict(
        init_cfg=dict(
            type='Pretrained',
            checkpoint='work_dirs/tiny_texture_cls/epoch_10.pth',
            prefix='backbone.')))
