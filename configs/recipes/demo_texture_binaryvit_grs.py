# Demo: the BinaryViT preset (Xiao et al., TCSVT 2024: centred sign weights,
# activation shift module + ApproxSign, RPReLU) with its GRS-like weight
# regulariser: `loss_grs` (weight ramped linearly from 0 over 40 iterations)
# and the unweighted `grs_reg` appear in the training log. Fully binary,
# single stage, the demo's 400 iterations.
_base_ = ['../demo_texture.py']
preset = 'binaryvit'
model = dict(
    type='BinaryEncoderDecoder',
    binarize=None,
    grs=dict(weight=1.0, warmup_iters=40),
    backbone=dict(preset=preset),
    decode_head=dict(preset=preset))
