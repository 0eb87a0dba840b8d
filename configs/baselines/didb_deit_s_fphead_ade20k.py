# "Binary backbone + FP neck/head" row: the DIDBViT DeiT-S backbone of
# ../didb_deit_s_ade20k.py with a full-precision neck and heads (preset fp
# makes BinaryMultiLevelNeck / BinaryUPerHead / BinaryFCNHead exactly mmseg's
# MultiLevelNeck / UPerHead / FCNHead).
_base_ = ['../didb_deit_s_ade20k.py']
model = dict(
    neck=dict(preset='fp'),
    decode_head=dict(preset='fp'),
    auxiliary_head=dict(preset='fp'))
