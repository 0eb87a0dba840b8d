# Full-precision row: the same Swin-T UPerNet topology with binarization off
# (preset fp: the heads are then exactly mmseg's UPerHead / FCNHead).
# Same segmentor, data, schedule and ImageNet initialisation as
# ../didb_swin_t_ade20k.py.
_base_ = ['../didb_swin_t_ade20k.py']
preset = 'fp'
model = dict(
    backbone=dict(preset=preset),
    decode_head=dict(preset=preset),
    auxiliary_head=dict(preset=preset))
