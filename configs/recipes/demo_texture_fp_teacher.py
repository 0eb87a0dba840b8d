# Demo recipe, step 0: the full-precision teacher for distillation. The same
# small Swin-UPerNet topology as the binary student (preset 'fp': DIDBSwin is
# timm's / official Swin and BinaryUPerHead is mmseg's UPerHead), trained from
# scratch on the texture-mosaic dataset.
#   python tools/train.py configs/recipes/demo_texture_fp_teacher.py
# -> work_dirs/demo_texture_fp_teacher/iter_400.pth (the teacher checkpoint of
# demo_texture_kd_stage1.py).
_base_ = ['../demo_texture.py']
model = dict(backbone=dict(preset='fp'), decode_head=dict(preset='fp'))
