# mmseg's 160k iteration schedule with AdamW, linear warmup and poly decay (the
# recipe of mmseg's Swin/ViT UPerNet configs) and weight decay switched off for
# every parameter that is not a conv/linear latent weight or bias: binary
# scales, activation shifts (RSign/ASM/elastic), attention-probability scales,
# (Token) RPReLU, HFSC/DIBA scalars, norms, position embeddings and tables.
_base_ = ['mmseg::_base_/schedules/schedule_160k.py']
no_decay = dict(decay_mult=0.)
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(
        type='AdamW', lr=0.0001, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(
        # norm layers of any name (LN, BN, SyncBN) by module type
        norm_decay_mult=0.,
        custom_keys={
            # FP parts, as mmseg's Swin / ViT configs
            'absolute_pos_embed': no_decay,
            'relative_position_bias_table': no_decay,
            'pos_embed': no_decay,
            'cls_token': no_decay,
            'norm': no_decay,
            # quantizer parameters: RSign / ASM / elastic shifts and scales
            # of binary linears and convs, PWS weight scales, and in the DIDB
            # attention the q/k/v sign shifts (q_low_quant, v_quant, ...) and
            # the {0, a} probability scale (attn_quant)
            'input_quantizer': no_decay,
            'weight_quantizer': no_decay,
            '_quant.': no_decay,
            # RPReLU / Token RPReLU (shifts gamma, zeta and PReLU slopes)
            'gamma': no_decay,
            'zeta': no_decay,
            'prelu': no_decay,
            'slope': no_decay,
            # DIDB attention scalars
            'hfsc_mix': no_decay,
            'diba_scale': no_decay,
            'diba_local_scale': no_decay,
        }))
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
