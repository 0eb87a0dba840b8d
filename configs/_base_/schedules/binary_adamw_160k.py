# mmseg's 160k iteration schedule with AdamW, linear warmup and poly decay (the
# recipe of mmseg's Swin/ViT UPerNet configs) and weight decay switched off for
# every parameter that is not a conv/linear latent weight or bias: binary
# scales, activation shifts (RSign/ASM/elastic), attention-probability scales,
# (Token) RPReLU, HFSC/DIBA scalars, norms, position embeddings and tables.
_base_ = [
    'mmseg::_base_/schedules/schedule_160k.py', './binary_paramwise.py']
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    # keeps the optimizer step eager, so that compile=True works
    constructor='CompilableOptimWrapperConstructor',
    optimizer=dict(
        type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg={{_base_.binary_paramwise_cfg}})
param_scheduler = [
    dict(
        type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(
        type='PolyLR',
        eta_min=0.0,
        power=1.0,
        begin=1500,
        end=160000,
        by_epoch=False,
    )
]
