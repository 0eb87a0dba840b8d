# Demo recipe, two-stage training in a single run: BinarizationSwitchHook keeps
# the weight quantizers off (stage 1: binary activations, FP weights) for the
# first half of the schedule and switches them on (stage 2, fully binary) at
# iteration 200; resuming on either side restores the right stage.
_base_ = ['./demo_texture_stage1.py']
model = dict(binarize=None)
max_iters = 400
weights_on_iter = 200
custom_hooks = [
    dict(type='BinarizationSwitchHook', weights_on_iter=weights_on_iter)
]
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
