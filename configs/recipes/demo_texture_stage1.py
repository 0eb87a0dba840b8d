# Demo recipe, two-stage training (ReActNet, Liu et al. ECCV 2020), stage 1:
# the binary DIDBSwin + binary UPerNet of the demo with binary activations
# (and attention probabilities) but full-precision weights. Same network,
# parameters and checkpoint keys as stage 2; only the weight quantizers are
# switched off (model.binarize).
#   python tools/train.py configs/recipes/demo_texture_stage1.py
#   python tools/train.py configs/recipes/demo_texture_stage2.py
_base_ = ['../demo_texture.py']
model = dict(
    type='BinaryEncoderDecoder', binarize=dict(weights=False), grs=None)

# Half of the demo's budget per stage; ReActNet step 1 uses weight decay 1e-5.
max_iters = 200
optim_wrapper = dict(optimizer=dict(weight_decay=1e-5))
# the demo's warm-up and poly decay, over the shorter run
param_scheduler = [
    dict(_base_.param_scheduler[0], end=20),
    dict(_base_.param_scheduler[1], begin=20, end=max_iters),
]
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
