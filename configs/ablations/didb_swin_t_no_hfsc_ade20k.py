# Ablation of ../didb_swin_t_ade20k.py, one DIDB component switched off:
# HFSC off: plain binary Q K^T similarity (no Haar low/high split).
_base_ = ['../didb_swin_t_ade20k.py']
checkpoint_file = 'pretrained/swin_tiny_patch4_window7_224_didb_no_hfsc.pth'
model = dict(
    backbone=dict(
        preset_overrides=dict(hfsc=False),
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)))
