# Demo: the BinaryViT preset (Xiao et al., TCSVT 2024: centred sign weights,
# activation shift module + ApproxSign, RPReLU) with its GRS-like weight
# regulariser: `loss_grs` (weight ramped linearly from 0 over 40 iterations)
# and the unweighted `grs_reg` appear in the training log. Fully binary,
# single stage, the demo's 400 iterations.
_base_ = ['./demo_texture_stage1.py']
preset = 'binaryvit'
model = dict(
    binarize=None,
    grs=dict(_delete_=True, weight=1.0, warmup_iters=40),
    backbone=dict(preset=preset),
    decode_head=dict(preset=preset))
max_iters = 400
optim_wrapper = dict(optimizer=dict(weight_decay=0.01))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.05, by_epoch=False, begin=0, end=40),
    dict(
        type='PolyLR',
        power=1.0,
        eta_min=0.0,
        by_epoch=False,
        begin=40,
        end=max_iters)
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
