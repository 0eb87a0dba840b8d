# BNN row (Courbariaux/Hubara et al.): sign weights x row scale, sign
# activations with clipped STE, {0, a} attention, plain PReLU.
# Same segmentor, data and schedule as ../didb_swin_t_ade20k.py.
_base_ = ['../didb_swin_t_ade20k.py']
preset = 'bnn'
checkpoint_file = 'pretrained/swin_tiny_patch4_window7_224_bnn.pth'
model = dict(
    backbone=dict(
        preset=preset,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    decode_head=dict(preset=preset),
    auxiliary_head=dict(preset=preset))
