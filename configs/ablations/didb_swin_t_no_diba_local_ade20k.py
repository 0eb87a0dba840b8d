# Ablation of ../didb_swin_t_ade20k.py, one DIDB component switched off:
# DIBA local term l_l * sum_N8 (v_j - v_i) off.
_base_ = ['../didb_swin_t_ade20k.py']
model = dict(
    backbone=dict(preset_overrides=dict(diba_local=False)))
