# The ADE20K training setup of the DIDB configs, to go with a model base:
# mmseg's ADE20K (150 classes, 512x512 crops; a missing dataset stops training
# with download instructions), mmseg's default runtime and 160k iterations of
# AdamW without weight decay on binary scales/shifts, RPReLU, DIDB scalars,
# norms and tables. The batch follows mmseg's Swin-T UPerNet protocol.
_base_ = [
    './datasets/ade20k_checked.py',
    'mmseg::_base_/default_runtime.py',
    './schedules/binary_adamw_160k.py',
]
custom_imports = dict(imports=['mmseg_didb'], allow_failed_imports=False)
# By default, models are trained on 8 GPUs with 2 images per GPU
train_dataloader = dict(batch_size=2)
