# Ablation of ../didb_swin_t_ade20k.py, one DIDB component switched off:
# Token RPReLU off: per-channel RPReLU only.
_base_ = ['../didb_swin_t_ade20k.py']
model = dict(
    backbone=dict(preset_overrides=dict(token_rprelu=False)))
