# DIDBSwin-T UPerNet on ADE20K, two-stage training, stage 2: fully binary
# (W1A1), initialised from the stage-1 checkpoint through load_from (the
# ImageNet backbone checkpoint is not needed again); no weight decay.
_base_ = ['./didb_swin_t_ade20k_stage1.py']
model = dict(binarize=None, backbone=dict(init_cfg=None))
optim_wrapper = dict(optimizer=dict(weight_decay=0.))
load_from = 'work_dirs/didb_swin_t_ade20k_stage1/iter_80000.pth'
