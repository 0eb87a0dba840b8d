# BiT row (Liu et al., NeurIPS 2022): BWN weights, elastic signed
# activations, elastic {0, a} attention, RPReLU.
# Same segmentor, data, schedule and ImageNet initialisation as
# ../didb_swin_t_ade20k.py.
_base_ = ['../didb_swin_t_ade20k.py']
preset = 'bit'
model = dict(
    backbone=dict(preset=preset),
    decode_head=dict(preset=preset),
    auxiliary_head=dict(preset=preset))
