# Demo recipe, two-stage training, stage 2: fully binary (W1A1), initialised
# from the stage-1 checkpoint; ReActNet step 2 uses no weight decay.
_base_ = ['./demo_texture_stage1.py']
model = dict(binarize=None)
optim_wrapper = dict(optimizer=dict(weight_decay=0.))
load_from = 'work_dirs/demo_texture_stage1/iter_200.pth'
