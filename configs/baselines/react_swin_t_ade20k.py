# ReActNet row (Liu et al., ECCV 2020): centred sign weights, RSign +
# ApproxSign activations, RPReLU, {0, a} attention.
# Same segmentor, data and schedule as ../didb_swin_t_ade20k.py.
_base_ = ['../didb_swin_t_ade20k.py']
preset = 'react'
checkpoint_file = 'pretrained/swin_tiny_patch4_window7_224_react.pth'
model = dict(
    backbone=dict(
        preset=preset,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    decode_head=dict(preset=preset),
    auxiliary_head=dict(preset=preset))
