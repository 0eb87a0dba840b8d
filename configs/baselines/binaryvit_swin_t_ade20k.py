# BinaryViT row (Xiao et al., TCSVT 2024): centred sign weights, activation
# shift module (ASM) + ApproxSign, RPReLU, GRS-like weight regulariser.
# Same segmentor, data, schedule and ImageNet initialisation as
# ../didb_swin_t_ade20k.py.
_base_ = ['../didb_swin_t_ade20k.py']
preset = 'binaryvit'
model = dict(
    # weight ramped linearly from 0 over the warmup (reconstruction, see
    # mmseg_didb.binary.regularizers)
    grs=dict(weight=1.0, warmup_iters=1500),
    backbone=dict(preset=preset),
    decode_head=dict(preset=preset),
    auxiliary_head=dict(preset=preset))
