# Full-precision row: the same Swin-T UPerNet topology with binarization off
# (preset fp: the heads are then exactly mmseg's UPerHead / FCNHead).
# Same segmentor, data and schedule as ../didb_swin_t_ade20k.py.
_base_ = ['../didb_swin_t_ade20k.py']
preset = 'fp'
checkpoint_file = 'pretrained/swin_tiny_patch4_window7_224_fp.pth'
model = dict(
    backbone=dict(
        preset=preset,
        init_cfg=dict(type='Pretrained', checkpoint=checkpoint_file)),
    decode_head=dict(preset=preset),
    auxiliary_head=dict(preset=preset))
