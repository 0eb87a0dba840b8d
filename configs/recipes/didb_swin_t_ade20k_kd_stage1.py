# Two-stage training with distillation from the FP Swin-T UPerNet, stage 1
# (binary activations, FP weights; see didb_swin_t_ade20k_stage1.py and
# didb_swin_t_ade20k_kd_swin_t.py).
_base_ = [
    './didb_swin_t_ade20k_stage1.py',
    '../_base_/models/distill_fp_swin_t.py',
]
model = _base_.distill_fp_swin_t
