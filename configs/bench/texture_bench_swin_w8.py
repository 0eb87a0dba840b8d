# The accuracy benchmark's larger-window Swin task (tools/analysis/
# accuracy_bench.py --task swin_w8): texture_bench.py's DIDBSwin with 8x8
# windows (64 tokens per window in stage 1, a whole stage from stage 2 on)
# and two blocks per stage, so that every second block attends over shifted
# windows. Data, protocol and schedule are those of texture_bench.py.
_base_ = ['./texture_bench.py']
model = dict(backbone=dict(depths=(2, 2, 2, 2), window_size=8))
