# Two-stage training with distillation, stage 2: fully binary, from the
# distilled stage 1, same teacher; no weight decay.
_base_ = ['./didb_swin_t_ade20k_kd_stage1.py']
model = dict(binarize=None, backbone=dict(init_cfg=None))
optim_wrapper = dict(optimizer=dict(weight_decay=0.))
load_from = 'work_dirs/didb_swin_t_ade20k_kd_stage1/iter_80000.pth'
