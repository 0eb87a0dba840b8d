# Ablation of ../didb_swin_t_ade20k.py, one DIDB component switched off:
# DIBA shortcut term (l_s - k_i) v_i off.
_base_ = ['../didb_swin_t_ade20k.py']
checkpoint_file = 'pretrained/swin_tiny_patch4_window7_224_didb_no_diba_shortcut.pth'
model = dict(
    backbone=dict(
        preset_overrides=dict(diba_shortcut=False),
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)))
