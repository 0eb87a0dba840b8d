# Ablation of ../didb_swin_t_ade20k.py, one DIDB component switched off:
# DIBA shortcut term (l_s - k_i) v_i off.
_base_ = ['../didb_swin_t_ade20k.py']
model = dict(
    backbone=dict(preset_overrides=dict(diba_shortcut=False)))
