# Demo recipe, two-stage training in a single run: BinarizationSwitchHook keeps
# the weight quantizers off (stage 1: binary activations, FP weights) for the
# first half of the schedule and switches them on (stage 2, fully binary) at
# iteration 200; resuming on either side restores the right stage.
# The network and weight decay of demo_texture_stage1.py over the demo's full
# 400-iteration schedule.
_base_ = ['../demo_texture.py']
model = dict(type='BinaryEncoderDecoder', binarize=None, grs=None)
optim_wrapper = dict(optimizer=dict(weight_decay=1e-5))
weights_on_iter = 200
custom_hooks = [
    dict(type='BinarizationSwitchHook', weights_on_iter=weights_on_iter)
]
