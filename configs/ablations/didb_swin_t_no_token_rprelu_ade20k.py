# Ablation of ../didb_swin_t_ade20k.py, one DIDB component switched off:
# Token RPReLU off: per-channel RPReLU only.
_base_ = ['../didb_swin_t_ade20k.py']
checkpoint_file = 'pretrained/swin_tiny_patch4_window7_224_didb_no_token_rprelu.pth'
model = dict(
    backbone=dict(
        preset_overrides=dict(token_rprelu=False),
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)))
