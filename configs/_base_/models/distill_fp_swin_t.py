# Distillation from the FP Swin-T UPerNet of mmseg's model zoo (44.41 mIoU):
# CE + per-pixel KL(teacher || student) on the decode-head logits. The teacher
# is built from mmseg's own config, frozen, in eval mode and never saved with
# the student. Download its checkpoint (mmseg swin metafile,
# "upernet_swin_tiny_patch4_window7_512x512_160k_ade20k_pretrain_224x224_1K")
# and put it at teacher_checkpoint below.
# Not a model of its own: a student config adds this file to its _base_ and
# merges the settings into its model with `model = _base_.distill_fp_swin_t`.
distill_fp_swin_t = dict(
    type='DistillEncoderDecoder',
    teacher_config='mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_'
    '8xb2-160k_ade20k-512x512.py',
    teacher_checkpoint='pretrained/upernet_swin_tiny_patch4_window7_512x512_'
    '160k_ade20k_pretrain_224x224_1K_20210531_112542-e380ad3e.pth',
    distill=dict(temperature=1.0, weight=1.0))
