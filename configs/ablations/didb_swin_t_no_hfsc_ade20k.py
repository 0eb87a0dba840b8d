# Ablation of ../didb_swin_t_ade20k.py, one DIDB component switched off:
# HFSC off: plain binary Q K^T similarity (no Haar low/high split).
_base_ = ['../didb_swin_t_ade20k.py']
model = dict(
    backbone=dict(preset_overrides=dict(hfsc=False)))
