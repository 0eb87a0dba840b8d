# BiT row (Liu et al., NeurIPS 2022): BWN weights, elastic signed
# activations, elastic {0, a} attention, RPReLU.
# Same segmentor, data and schedule as ../didb_swin_t_ade20k.py.
_base_ = ['../didb_swin_t_ade20k.py']
preset = 'bit'
checkpoint_file = 'pretrained/swin_tiny_patch4_window7_224_bit.pth'
model = dict(
    backbone=dict(
        preset=preset,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    decode_head=dict(preset=preset),
    auxiliary_head=dict(preset=preset))
