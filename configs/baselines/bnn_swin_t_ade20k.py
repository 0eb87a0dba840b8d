# BNN row (Courbariaux/Hubara et al.): sign weights x row scale, sign
# activations with clipped STE, {0, a} attention, plain PReLU.
# Same segmentor, data, schedule and ImageNet initialisation as
# ../didb_swin_t_ade20k.py.
_base_ = ['../didb_swin_t_ade20k.py']
preset = 'bnn'
model = dict(
    backbone=dict(preset=preset),
    decode_head=dict(preset=preset),
    auxiliary_head=dict(preset=preset))
