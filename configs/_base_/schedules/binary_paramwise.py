# Weight decay off for every parameter that is not a conv/linear latent weight
# or bias: binary scales, activation shifts (RSign/ASM/elastic),
# attention-probability scales, (Token) RPReLU, HFSC/DIBA scalars, norms,
# position embeddings and tables. Shared by the segmentation schedules and the
# mmpretrain pretraining configs: `paramwise_cfg={{_base_.binary_paramwise_cfg}}`.
no_decay = dict(decay_mult=0.)
binary_paramwise_cfg = dict(
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
        # DIDB attention scalars: HFSC mixing b, DIBA scales l_s, l_l
        'similarity.mix': no_decay,
        'aggregation.': no_decay,
    })
