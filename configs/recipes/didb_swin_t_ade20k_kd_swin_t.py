# DIDBSwin-T UPerNet on ADE20K distilled from the FP Swin-T UPerNet of
# mmseg's model zoo (44.41 mIoU): CE + per-pixel KL(teacher || student) on the
# decode-head logits. The teacher is built from mmseg's own config, frozen, in
# eval mode and never saved with the student. Its checkpoint goes at the
# teacher_checkpoint of ../_base_/models/distill_fp_swin_t.py.
_base_ = [
    '../didb_swin_t_ade20k.py',
    '../_base_/models/distill_fp_swin_t.py',
]
model = _base_.distill_fp_swin_t
