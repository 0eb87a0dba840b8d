# BinaryViT row (Xiao et al., TCSVT 2024): centred sign weights, activation
# shift module (ASM) + ApproxSign, RPReLU, GRS-like weight regulariser.
# Same segmentor, data and schedule as ../didb_swin_t_ade20k.py.
_base_ = ['../didb_swin_t_ade20k.py']
preset = 'binaryvit'
checkpoint_file = 'pretrained/swin_tiny_patch4_window7_224_binaryvit.pth'
model = dict(
    # weight ramped linearly from 0 over the warmup (reconstruction, see
    # mmseg_didb.binary.regularizers)
    grs=dict(weight=1.0, warmup_iters=1500),
    backbone=dict(
        preset=preset,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    decode_head=dict(preset=preset),
    auxiliary_head=dict(preset=preset))
