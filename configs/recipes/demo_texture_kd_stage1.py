# Demo recipe, two-stage training with distillation, stage 1 (binary
# activations, FP weights): CE + per-pixel KL to the frozen FP teacher of
# demo_texture_fp_teacher.py (train it first; `loss_kd` is in the log).
#   python tools/train.py configs/recipes/demo_texture_fp_teacher.py
#   python tools/train.py configs/recipes/demo_texture_kd_stage1.py
#   python tools/train.py configs/recipes/demo_texture_kd_stage2.py
_base_ = ['./demo_texture_stage1.py']
model = dict(
    type='DistillEncoderDecoder',
    teacher_config='{{fileDirname}}/demo_texture_fp_teacher.py',
    teacher_checkpoint='work_dirs/demo_texture_fp_teacher/iter_400.pth',
    distill=dict(temperature=1.0, weight=1.0))
