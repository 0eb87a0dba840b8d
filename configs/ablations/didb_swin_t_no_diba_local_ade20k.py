# Ablation of ../didb_swin_t_ade20k.py, one DIDB component switched off:
# DIBA local term l_l * sum_N8 (v_j - v_i) off.
_base_ = ['../didb_swin_t_ade20k.py']
checkpoint_file = 'pretrained/swin_tiny_patch4_window7_224_didb_no_diba_local.pth'
model = dict(
    backbone=dict(
        preset_overrides=dict(diba_local=False),
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)))
