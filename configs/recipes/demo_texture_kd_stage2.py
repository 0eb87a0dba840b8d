# Demo recipe, two-stage training with distillation, stage 2: fully binary,
# initialised from the distilled stage 1, same teacher and KD loss.
_base_ = ['./demo_texture_kd_stage1.py']
model = dict(binarize=None)
optim_wrapper = dict(optimizer=dict(weight_decay=0.))
load_from = 'work_dirs/demo_texture_kd_stage1/iter_200.pth'
