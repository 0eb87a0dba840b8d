# "Binary backbone + FP head" row: the DIDBSwin-T backbone of
# ../didb_swin_t_ade20k.py with full-precision heads (preset fp makes
# BinaryUPerHead / BinaryFCNHead exactly mmseg's UPerHead / FCNHead).
_base_ = ['../didb_swin_t_ade20k.py']
model = dict(
    decode_head=dict(preset='fp'),
    auxiliary_head=dict(preset='fp'))
