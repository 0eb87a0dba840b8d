# ReActNet row (Liu et al., ECCV 2020): centred sign weights, RSign +
# ApproxSign activations, RPReLU, {0, a} attention.
# Same segmentor, data, schedule and ImageNet initialisation as
# ../didb_swin_t_ade20k.py.
_base_ = ['../didb_swin_t_ade20k.py']
preset = 'react'
model = dict(
    backbone=dict(preset=preset),
    decode_head=dict(preset=preset),
    auxiliary_head=dict(preset=preset))
