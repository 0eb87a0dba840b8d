# Two-stage training with distillation from the FP Swin-T UPerNet, stage 1
# (binary activations, FP weights; see didb_swin_t_ade20k_stage1.py and
# didb_swin_t_ade20k_kd_swin_t.py).
_base_ = ['./didb_swin_t_ade20k_stage1.py']
model = dict(
    type='DistillEncoderDecoder',
    teacher_config='mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_'
    '8xb2-160k_ade20k-512x512.py',
    teacher_checkpoint='pretrained/upernet_swin_tiny_patch4_window7_512x512_'
    '160k_ade20k_pretrain_224x224_1K_20210531_112542-e380ad3e.pth',
    distill=dict(temperature=1.0, weight=1.0))
