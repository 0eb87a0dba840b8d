# DIDBSwin-T UPerNet on ADE20K, two-stage training (ReActNet, Liu et al. ECCV
# 2020), stage 1: binary activations and attention probabilities, FP weights
# (model.binarize switches the weight quantizers off; parameters and
# checkpoint keys are those of the fully binary model). The 160k budget of
# ../didb_swin_t_ade20k.py is split in two 80k stages; ReActNet step 1 uses
# weight decay 1e-5.
#   python tools/train.py configs/recipes/didb_swin_t_ade20k_stage1.py
#   python tools/train.py configs/recipes/didb_swin_t_ade20k_stage2.py
_base_ = ['../didb_swin_t_ade20k.py']
model = dict(binarize=dict(weights=False))
max_iters = 80000
optim_wrapper = dict(optimizer=dict(weight_decay=1e-5))
# the 160k schedule's warm-up, then its poly decay ending with the stage
param_scheduler = [
    _base_.param_scheduler[0],
    dict(_base_.param_scheduler[1], end=max_iters),
]
train_cfg = dict(max_iters=max_iters, val_interval=8000)
default_hooks = dict(checkpoint=dict(interval=8000))
